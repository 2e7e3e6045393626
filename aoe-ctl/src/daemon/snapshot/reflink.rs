//! FICLONE and FICLONE_RANGE: share the image's extents with the copy (XFS, btrfs).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// _IOW(0x94, 9, int)
const FICLONE: libc::c_ulong = 0x4004_9409;
/// _IOW(0x94, 13, struct file_clone_range)
const FICLONE_RANGE: libc::c_ulong = 0x4020_940d;

#[repr(C)]
struct FileCloneRange {
    src_fd: i64,
    src_offset: u64,
    src_length: u64,
    dest_offset: u64,
}

/// Clone `len` bytes at `offset` of the file open at `src` into the empty `dest`: the whole
/// file when that is all of it, else the range (which the filesystem wants aligned to its
/// block size except at the end of the file).
pub fn clone(src: RawFd, offset: u64, len: u64, dest: &File) -> io::Result<()> {
    // SAFETY: fstat on a descriptor the caller keeps open, into a zeroed struct.
    let size = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(src, &mut st) != 0 {
            return Err(io::Error::last_os_error());
        }
        st.st_size as u64
    };
    // SAFETY: ioctls on two open descriptors; the range struct outlives the call.
    let r = unsafe {
        if offset == 0 && len == size {
            libc::ioctl(dest.as_raw_fd(), FICLONE, src)
        } else {
            let range = FileCloneRange {
                src_fd: i64::from(src),
                src_offset: offset,
                src_length: len,
                dest_offset: 0,
            };
            libc::ioctl(dest.as_raw_fd(), FICLONE_RANGE, &range)
        }
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Does `e` say this filesystem (or this pair of files) cannot reflink, rather than that
/// the clone failed?
pub fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY | libc::ENOSYS)
    )
}
