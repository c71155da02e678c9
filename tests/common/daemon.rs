//! The real daemon as a child process: `poshsm serve --dev` on a data dir,
//! killed with SIGKILL (no shutdown handler, no final flush) when dropped.

use poshsm::cli::client::{connect, ClientConfig};
use poshsm::proto::{crypto_client::CryptoClient, key_admin_client::KeyAdminClient};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use tonic::transport::Channel;

pub struct Daemon {
    pub child: Child,
    pub addr: String,
}

impl Daemon {
    /// Starts `serve --dev` on `dir` with extra environment, and waits for its address.
    pub fn start_with_env(dir: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_poshsm"));
        cmd.args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .env("POSHSM_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn poshsm");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        // Keeps reading so the daemon never writes to a closed pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("poshsm listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(addr) => Daemon { child, addr },
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                panic!("the daemon did not come up: {status:?}")
            }
        }
    }

    pub fn start(dir: &Path) -> Daemon {
        Daemon::start_with_env(dir, &[])
    }

    /// SIGKILL and reap.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        let status = self.child.wait().expect("wait");
        assert!(!status.success(), "killed, not exited: {status:?}");
    }

    /// Admin and POSP clients over mutual TLS with the data dir's dev certificates.
    pub async fn clients(&self, dir: &Path) -> (KeyAdminClient<Channel>, CryptoClient<Channel>) {
        let admin = connect(&ClientConfig::from_data_dir(&self.addr, dir, "admin"))
            .await
            .expect("admin channel");
        let posp = connect(&ClientConfig::from_data_dir(&self.addr, dir, "posp"))
            .await
            .expect("posp channel");
        (KeyAdminClient::new(admin), CryptoClient::new(posp))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
