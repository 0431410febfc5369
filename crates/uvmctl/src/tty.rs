//! The host terminal: raw mode for `-t`, and its window size.

use std::io::IsTerminal;
use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::termios::{self, SetArg, Termios};

/// Puts stdin's terminal in raw mode and restores it on drop (also on panic).
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Enables raw mode on stdin; `None` when stdin is not a terminal.
    pub fn enable() -> anyhow::Result<Option<RawMode>> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(Some(RawMode { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let stdin = std::io::stdin();
        // Best effort: the terminal may be gone already.
        let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, libc::winsize);

/// Rows and columns of the terminal on `fd`, if it is one.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<(u32, u32)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the pointer we pass, which
    // points at a live, properly aligned local; the fd is borrowed and open.
    let r = unsafe { tiocgwinsz(std::os::fd::AsRawFd::as_raw_fd(&fd), &mut ws) };
    match r {
        Ok(_) if ws.ws_row > 0 && ws.ws_col > 0 => Some((ws.ws_row.into(), ws.ws_col.into())),
        _ => None,
    }
}

/// Window size of whichever of stdout/stdin is a terminal.
pub fn host_window_size() -> Option<(u32, u32)> {
    window_size(std::io::stdout().as_fd()).or_else(|| window_size(std::io::stdin().as_fd()))
}
