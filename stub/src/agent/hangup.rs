//! An agent outlives no operator: when the operator's side of its stdout goes away (Ctrl-C, a
//! killed process, a lost link: sshd then closes the session's pipes), the agent exits instead of
//! finishing work nobody waits for, and any relay listener it runs closes with it.
//!
//! Owns the watch: a thread polling stdout for the error a pipe or socket reports once its
//! reading end is closed. Nothing is left half-written by exiting: received chunks land whole and
//! are checked again when a later run resumes, and every file ferry installs is renamed into place.

use std::os::fd::RawFd;

/// Exit status of an agent whose operator went away (as for SIGHUP).
pub const OPERATOR_GONE: i32 = 129;

/// Starts the watch when stdout is a pipe or a socket (from sshd); a terminal or a file is left
/// alone, as nobody hangs up on those.
pub fn exit_when_operator_leaves() {
    if !is_pipe_or_socket(libc::STDOUT_FILENO) {
        return;
    }
    let _ = std::thread::Builder::new().name("hangup".into()).spawn(|| {
        wait_for_hangup(libc::STDOUT_FILENO);
        eprintln!("the operator went away: stopping");
        std::process::exit(OPERATOR_GONE);
    });
}

fn is_pipe_or_socket(fd: RawFd) -> bool {
    // SAFETY: fstat on a descriptor number into a zeroed plain struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return false;
    }
    matches!(st.st_mode & libc::S_IFMT, libc::S_IFIFO | libc::S_IFSOCK)
}

/// Blocks until `fd`'s reader is gone (POLLERR or POLLHUP on a write end).
fn wait_for_hangup(fd: RawFd) {
    loop {
        let mut p = libc::pollfd { fd, events: 0, revents: 0 };
        // SAFETY: one valid pollfd; no events asked for, so only errors and hangups wake it.
        let n = unsafe { libc::poll(&mut p, 1, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // poll itself failed: nothing can be watched, so nothing is stopped.
            std::thread::park();
        }
        if p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_closed_reader_is_noticed_at_once() {
        let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(is_pipe_or_socket(writer.as_raw_fd()));
        let fd = writer.as_raw_fd();
        let watch = std::thread::spawn(move || wait_for_hangup(fd));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!watch.is_finished(), "woke with the reader still there");
        drop(reader);
        watch.join().unwrap();
        let mut fds = [0; 2];
        // SAFETY: a pipe into a two-element array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        assert!(is_pipe_or_socket(fds[1]));
        unsafe { libc::close(fds[0]) };
        wait_for_hangup(fds[1]);
        unsafe { libc::close(fds[1]) };
        let file = tempfile::tempfile().unwrap();
        assert!(!is_pipe_or_socket(file.as_raw_fd()));
    }
}
