//! A real SMTP server for tests: aiosmtpd (`infra/scripts/smtp.sh`, pinned) on a free port, writing each
//! message it accepts into a Maildir of the test's own, which is deleted when the server is dropped.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running SMTP server and the mail it received.
pub struct MailServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl MailServer {
    /// Starts a server on a free port; panics when it does not answer within 20 s.
    pub async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let dir = std::env::temp_dir().join(format!("orderflow-mail-{}", uuid::Uuid::new_v4().simple()));
        let mut server = Self { port, dir, child: None };
        server.resume().await;
        server
    }

    /// `SMTP_URL` of the server.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Stops the server (its port refuses connections) and keeps the mail it received.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the stopped server again on the same port and Maildir.
    pub async fn resume(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/scripts/smtp.sh");
        let child = Command::new("bash")
            .arg(script)
            .arg(self.port.to_string())
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("infra/scripts/smtp.sh starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "the SMTP server did not answer on port {} within 20 s", self.port);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every message received so far, oldest first.
    pub fn received(&self) -> Vec<ReceivedMail> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("new")) else { return Vec::new() };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(Result::ok)
            .map(|e| (e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), e.path()))
            .collect();
        files.sort();
        files.into_iter().filter_map(|(_, path)| std::fs::read_to_string(path).ok()).map(ReceivedMail).collect()
    }
}

impl Drop for MailServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One message as the server stored it: the headers it was sent with (aiosmtpd adds `X-MailFrom`,
/// `X-RcptTo` and `X-Peer`), then the MIME body.
#[derive(Debug, Clone)]
pub struct ReceivedMail(pub String);

impl ReceivedMail {
    /// The value of the first header called `name` (any case), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.0.split("\n\n").next().unwrap_or_default();
        let mut value: Option<String> = None;
        for line in head.lines() {
            match &mut value {
                Some(v) if line.starts_with([' ', '\t']) => v.push_str(line.trim_end()),
                Some(_) => break,
                None => {
                    if let Some((key, rest)) = line.split_once(':')
                        && key.eq_ignore_ascii_case(name)
                    {
                        value = Some(rest.trim().to_owned());
                    }
                }
            }
        }
        value
    }

    /// Whether the raw message contains `text` (bodies of ASCII text travel unencoded).
    pub fn contains(&self, text: &str) -> bool {
        self.0.contains(text)
    }
}
