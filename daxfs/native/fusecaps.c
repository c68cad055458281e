/*
 * The FUSE capabilities daxfs needs and pyfuse3 cannot negotiate, and the request flags that
 * come with them. Loaded into the daxfs daemon with LD_PRELOAD (tools/_run does it when the
 * library is built); it wraps libfuse's fuse_session_new.
 *
 * FUSE_DONT_MASK. With POSIX ACLs a directory's default ACL, not the umask, decides the
 * permissions of what is created in it, so the kernel must hand the server the mode
 * unmasked together with the umask and let the server apply one or the other. pyfuse3 asks
 * for FUSE_CAP_POSIX_ACL but never for FUSE_CAP_DONT_MASK: the init callback is wrapped
 * and adds it after pyfuse3's own. daxfs applies the umask itself when there is no default
 * ACL (a second masking by a kernel that did not agree changes nothing).
 *
 * FUSE_HANDLE_KILLPRIV_V2. Without it the kernel asks for security.capability before every
 * write(2) (file_remove_privs: a FUSE superblock is not SB_NOSEC, so no inode ever gets
 * S_NOSEC), a GETXATTR request per write. With it the superblock is SB_NOSEC: once a file
 * is found to have no set-id bits and no capability, its writes skip the check, and the
 * server clears the set-id bits itself when the kernel says so: FUSE_WRITE_KILL_SUIDGID on
 * a write, FATTR_KILL_SUIDGID on a setattr (truncate, chown), FUSE_OPEN_KILL_SUIDGID on an
 * open or create with O_TRUNC, each set only when the caller lacks CAP_FSETID. libfuse
 * 3.14 has no FUSE_CAP for it (conn->want cannot say it) and drops all three flags before
 * the file system sees a request, so this library does both on the wire, through libfuse's
 * custom I/O hooks (fuse_session_custom_io): the reply to INIT gets the flag when the
 * kernel offered it, and each request's kill flag is copied into a field that libfuse and
 * pyfuse3 pass to Python:
 *
 *   WRITE    fuse_write_in.fh gets DAXFS_FH_KILL_SUIDGID (bit 63; daxfs never hands out
 *            such a handle)
 *   SETATTR  fuse_setattr_in.fh gets the same bit, with FATTR_FH set if it was not (the
 *            handle is then the bit alone, which daxfs reads as "no handle")
 *   OPEN,    fuse_open_in.flags / fuse_create_in.flags get DAXFS_O_KILL_SUIDGID (bit 30,
 *   CREATE   no open flag of Linux's; cleared first so a stray one is never misread)
 *
 * daxfs/killpriv.py decodes them. Without this library the kernel keeps asking for
 * security.capability and does the clearing itself through setattr, as before.
 *
 * FUSE_DIRECT_IO_ALLOW_MMAP (Linux 6.6, bit 36: flags2 of an extended INIT). A file opened
 * with FOPEN_DIRECT_IO bypasses the page cache for read(2) and write(2), which is what DAX
 * means, but without this flag the kernel refuses a shared mapping of it (ENODEV) and DAX
 * files must map. With it the mapping goes through the page cache and the kernel keeps
 * the two coherent: dirty mapped pages are written back before a direct read or write of
 * their range and invalidated before a direct write. libfuse 3.14 does not know the flag;
 * the reply to INIT gets it when the kernel offered it, as for the flag above.
 *
 * The session loop of pyfuse3 is one thread (trio), and INIT is answered within the
 * request that asked, so plain statics carry INIT's request id from read to reply.
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 35
#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>
#include <fuse_lowlevel.h>
#include <linux/fuse.h>

#define DAXFS_FH_KILL_SUIDGID (1ULL << 63)
#define DAXFS_O_KILL_SUIDGID (1U << 30)

/* what was negotiated, for daxfs's statistics (daxfs/killpriv.py reads it) */
#define DAXFS_CAP_DONT_MASK (1U << 0)
#define DAXFS_CAP_HANDLE_KILLPRIV_V2 (1U << 1)
#define DAXFS_CAP_DIRECT_IO_ALLOW_MMAP (1U << 2)

/* newer than the kernel headers of Debian 12: FUSE_DIRECT_IO_ALLOW_MMAP, bit 36 of the
 * 64 INIT flags, is bit 4 of flags2 */
#define DAXFS_INIT2_DIRECT_IO_ALLOW_MMAP (1U << (36 - 32))

static void (*inner_init)(void *userdata, struct fuse_conn_info *conn);
static struct fuse_lowlevel_ops ops;
static uint64_t init_unique;		/* the INIT request being answered, 0: none */
static int init_offers_v2;		/* the kernel offered FUSE_HANDLE_KILLPRIV_V2 */
static int init_offers_dio_mmap;	/* ... and FUSE_DIRECT_IO_ALLOW_MMAP */
static unsigned negotiated;

unsigned daxfs_fusecaps_negotiated(void)
{
	return negotiated;
}

static void init(void *userdata, struct fuse_conn_info *conn)
{
	if (inner_init)
		inner_init(userdata, conn);
	if ((conn->want & FUSE_CAP_POSIX_ACL) && (conn->capable & FUSE_CAP_DONT_MASK)) {
		conn->want |= FUSE_CAP_DONT_MASK;
		negotiated |= DAXFS_CAP_DONT_MASK;
	}
}

/* Copy the kill flag of one request into a field Python sees (see the header comment). */
static void tag_request(void *buf, size_t len)
{
	struct fuse_in_header *in = buf;
	void *arg = (char *)buf + sizeof(*in);
	size_t arglen = len - sizeof(*in);

	switch (in->opcode) {
	case FUSE_INIT:
		if (arglen >= offsetof(struct fuse_init_in, flags) + sizeof(uint32_t)) {
			struct fuse_init_in *init_in = arg;

			init_unique = in->unique;
			init_offers_v2 = (init_in->flags & FUSE_HANDLE_KILLPRIV_V2) != 0;
			init_offers_dio_mmap =
				(init_in->flags & FUSE_INIT_EXT) &&
				arglen >= offsetof(struct fuse_init_in, flags2) + sizeof(uint32_t) &&
				(init_in->flags2 & DAXFS_INIT2_DIRECT_IO_ALLOW_MMAP);
		}
		break;
	case FUSE_WRITE:
		if (arglen >= sizeof(struct fuse_write_in)) {
			struct fuse_write_in *w = arg;

			if (w->write_flags & FUSE_WRITE_KILL_SUIDGID)
				w->fh |= DAXFS_FH_KILL_SUIDGID;
		}
		break;
	case FUSE_SETATTR:
		if (arglen >= sizeof(struct fuse_setattr_in)) {
			struct fuse_setattr_in *s = arg;

			if (s->valid & FATTR_KILL_SUIDGID) {
				if (!(s->valid & FATTR_FH)) {
					s->valid |= FATTR_FH;
					s->fh = 0;
				}
				s->fh |= DAXFS_FH_KILL_SUIDGID;
			}
		}
		break;
	case FUSE_OPEN:
		if (arglen >= sizeof(struct fuse_open_in)) {
			struct fuse_open_in *o = arg;

			o->flags &= ~DAXFS_O_KILL_SUIDGID;
			if (o->open_flags & FUSE_OPEN_KILL_SUIDGID)
				o->flags |= DAXFS_O_KILL_SUIDGID;
		}
		break;
	case FUSE_CREATE:
		if (arglen >= sizeof(struct fuse_create_in)) {
			struct fuse_create_in *c = arg;

			c->flags &= ~DAXFS_O_KILL_SUIDGID;
			if (c->open_flags & FUSE_OPEN_KILL_SUIDGID)
				c->flags |= DAXFS_O_KILL_SUIDGID;
		}
		break;
	}
}

static ssize_t wire_read(int fd, void *buf, size_t buf_len, void *userdata)
{
	ssize_t n = read(fd, buf, buf_len);

	(void)userdata;
	if (n >= (ssize_t)sizeof(struct fuse_in_header))
		tag_request(buf, (size_t)n);
	return n;
}

/* The reply to INIT says FUSE_HANDLE_KILLPRIV_V2 (and no longer the first version, whose
 * job it takes over) and FUSE_DIRECT_IO_ALLOW_MMAP when the kernel offered them. libfuse
 * sends a reply as the header in iov[0] and the argument in iov[1]. */
static void patch_init_reply(struct iovec *iov, int count)
{
	struct fuse_out_header *out;
	struct fuse_init_out *arg;

	if (count < 2 || iov[0].iov_len != sizeof(*out))
		return;
	out = iov[0].iov_base;
	if (out->unique != init_unique)
		return;
	init_unique = 0;
	if (out->error ||
	    iov[1].iov_len < offsetof(struct fuse_init_out, flags) + sizeof(uint32_t))
		return;
	arg = iov[1].iov_base;
	if (init_offers_v2) {
		arg->flags = (arg->flags & ~FUSE_HANDLE_KILLPRIV) | FUSE_HANDLE_KILLPRIV_V2;
		negotiated |= DAXFS_CAP_HANDLE_KILLPRIV_V2;
	}
	/* the kernel reads flags2 only when the reply says FUSE_INIT_EXT; libfuse's reply
	 * carries the field (zeroed when it sets nothing there) */
	if (init_offers_dio_mmap &&
	    iov[1].iov_len >= offsetof(struct fuse_init_out, flags2) + sizeof(uint32_t)) {
		arg->flags |= FUSE_INIT_EXT;
		arg->flags2 |= DAXFS_INIT2_DIRECT_IO_ALLOW_MMAP;
		negotiated |= DAXFS_CAP_DIRECT_IO_ALLOW_MMAP;
	}
}

static ssize_t wire_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	(void)userdata;
	if (init_unique)
		patch_init_reply(iov, count);
	return writev(fd, iov, count);
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
	int (*custom_io)(struct fuse_session *, const struct fuse_custom_io *, int);
	static const struct fuse_custom_io wire = {
		.read = wire_read,
		.writev = wire_writev,
	};
	struct fuse_session *se;

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
	se = next(args, &ops, op_size, userdata);
	/* The descriptor given here is a placeholder: fuse_session_mount replaces it with
	 * the one it opens and keeps the hooks. Without splice hooks libfuse reads requests
	 * with read(2), so every request passes wire_read. */
	custom_io = dlsym(lib, "fuse_session_custom_io");
	if (se && custom_io)
		custom_io(se, &wire, 0);
	return se;
}
