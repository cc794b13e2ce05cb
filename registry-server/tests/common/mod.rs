//! What the `blocks` integration tests share: `blocks serve` as a child process on a free
//! port, with its own `$BLOCKS_HOME` and none of the caller's server settings.

use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// What of the caller's environment a test server must not see: another database, master
/// key, passphrase or address.
pub(crate) const SERVER_ENV: [&str; 6] = [
    "BLOCKS_DATABASE_URL",
    "BLOCKS_MASTER_KEY",
    "BLOCKS_MASTER_KEY_FILE",
    "BLOCKS_PASSPHRASE",
    "BLOCKS_HOST",
    "BLOCKS_PORT",
];

/// A running `blocks serve`, killed when dropped.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) child: Child,
    /// `HOST:PORT`, as its log says.
    pub(crate) addr: String,
}

impl Server {
    /// Starts `blocks serve --port 0 ARGS` with `home` as `$BLOCKS_HOME`, logging at `info`,
    /// without [`SERVER_ENV`] or `unset` from the caller's environment, and waits for the
    /// line saying where it listens. Every log line goes to `each_line`, while the server
    /// starts and after.
    pub(crate) fn start(
        home: &Path,
        unset: &[&str],
        args: &[&OsStr],
        each_line: impl Fn(&str) + Send + 'static,
    ) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_blocks"));
        for var in SERVER_ENV.iter().chain(unset) {
            cmd.env_remove(var);
        }
        let mut child = cmd
            .args(["serve", "--port", "0"])
            .args(args)
            .env("BLOCKS_HOME", home)
            .env("BLOCKS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("blocks serve starts");
        let stderr = child.stderr.take().expect("the server's stderr");
        let mut lines = BufReader::new(stderr).lines();
        // `blocks registry listening; the console is at http://…/ addr=127.0.0.1:PORT …`
        let addr = loop {
            let line = lines
                .next()
                .expect("the server exited before listening")
                .expect("the server's log");
            each_line(&line);
            if line.contains("blocks registry listening")
                && let Some(rest) = line.split("addr=").nth(1)
            {
                break rest
                    .split_whitespace()
                    .next()
                    .expect("an address")
                    .to_owned();
            }
        };
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                each_line(&line);
            }
        });
        Self { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
