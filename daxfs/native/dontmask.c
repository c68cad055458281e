/*
 * Loaded into the daxfs daemon with LD_PRELOAD (tools/_run does it when the library is
 * built): asks the kernel for FUSE_DONT_MASK whenever the file system asks for POSIX ACLs.
 *
 * Why: with POSIX ACLs a directory's default ACL, not the umask, decides the permissions
 * of what is created in it, so the kernel must hand the server the mode unmasked together
 * with the umask (FUSE_DONT_MASK) and let the server apply one or the other. pyfuse3 asks
 * for FUSE_CAP_POSIX_ACL (enable_acl) but never for FUSE_CAP_DONT_MASK, and offers no way
 * to, so this wraps libfuse's fuse_session_new and adds the capability in the init
 * callback, after pyfuse3's own. daxfs applies the umask itself when there is no default
 * ACL (a second masking by a kernel that did not agree changes nothing).
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 35
#include <dlfcn.h>
#include <string.h>
#include <fuse_lowlevel.h>

static void (*inner_init)(void *userdata, struct fuse_conn_info *conn);
static struct fuse_lowlevel_ops ops;

static void init(void *userdata, struct fuse_conn_info *conn)
{
	if (inner_init)
		inner_init(userdata, conn);
	if ((conn->want & FUSE_CAP_POSIX_ACL) && (conn->capable & FUSE_CAP_DONT_MASK))
		conn->want |= FUSE_CAP_DONT_MASK;
}

struct fuse_session *fuse_session_new(struct fuse_args *args,
				      const struct fuse_lowlevel_ops *op,
				      size_t op_size, void *userdata)
{
	/* pyfuse3 loads libfuse3 with its extension module, outside the global scope that
	 * RTLD_NEXT searches: ask the library itself */
	void *lib = dlopen("libfuse3.so.3", RTLD_LAZY | RTLD_NOLOAD);
	struct fuse_session *(*next)(struct fuse_args *, const struct fuse_lowlevel_ops *,
				     size_t, void *);

	if (!lib)
		lib = dlopen("libfuse3.so.3", RTLD_LAZY);
	next = lib ? dlsym(lib, "fuse_session_new") : NULL;
	if (!next || (void *)next == (void *)fuse_session_new)
		return NULL;
	if (op_size > sizeof(ops))
		op_size = sizeof(ops);
	memset(&ops, 0, sizeof(ops));
	memcpy(&ops, op, op_size);
	inner_init = ops.init;
	ops.init = init;
	return next(args, &ops, op_size, userdata);
}
