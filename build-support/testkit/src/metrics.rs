//! Reading a service's `/metrics` in tests: a plain HTTP/1.0 GET, a small
//! reader of the text format, and `promtool check metrics` as an
//! independent judge of it.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One scrape of a metrics endpoint.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub text: String,
}

/// One sample line: its name, labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Scrape {
    /// GETs `/metrics` from `addr`; panics unless it answers 200 in time.
    pub async fn from(addr: SocketAddr) -> Self {
        let fetch = async {
            let mut stream = TcpStream::connect(addr).await?;
            stream
                .write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
                .await?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await?;
            std::io::Result::Ok(response)
        };
        let response = tokio::time::timeout(Duration::from_secs(10), fetch)
            .await
            .unwrap_or_else(|_| panic!("{addr} did not answer a scrape within 10 s"))
            .unwrap_or_else(|err| panic!("cannot scrape {addr}: {err}"));
        let response = String::from_utf8(response).expect("a UTF-8 scrape");
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        Self {
            text: body.to_owned(),
        }
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .map(parse_sample)
            .collect()
    }

    /// The sum of the samples named `name` that carry every label in
    /// `labels`; `None` when there is no such sample.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples()
            .into_iter()
            .filter(|sample| sample.name == name)
            .filter(|sample| {
                labels.iter().all(|(k, v)| {
                    sample
                        .labels
                        .iter()
                        .any(|(key, value)| key == k && value == v)
                })
            })
            .map(|sample| sample.value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// Like `sum`, 0 when there is no such sample.
    pub fn total(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.sum(name, labels).unwrap_or(0.0)
    }

    /// Whether the family `name` is described (`# HELP name ...`).
    pub fn has_help(&self, name: &str) -> bool {
        self.families().any(|family| family == name)
    }

    /// The names of the families described in the scrape.
    pub fn families(&self) -> impl Iterator<Item = &str> {
        self.text.lines().filter_map(|line| {
            let described = line.strip_prefix("# HELP ")?;
            described.split(' ').next()
        })
    }

    /// Runs `promtool check metrics` on the scrape; `Err` with what it
    /// printed when it finds a problem.
    pub fn promtool_check(&self) -> Result<(), String> {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot run promtool ({err}); install Debian's `prometheus` package")
            });
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(self.text.as_bytes())
            .expect("write to promtool");
        let output = child.wait_with_output().expect("promtool ran");
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }
}

fn parse_sample(line: &str) -> Sample {
    let (series, value) = line.rsplit_once(' ').expect("a sample line");
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().unwrap_or(f64::NAN),
    };
    let Some((name, labels)) = series.split_once('{') else {
        return Sample {
            name: series.to_owned(),
            labels: Vec::new(),
            value,
        };
    };
    let labels = labels.strip_suffix('}').expect("labels end with }");
    Sample {
        name: name.to_owned(),
        labels: parse_labels(labels),
        value,
    }
}

/// `a="x",b="y"`, with `\"`, `\\` and `\n` escapes in values.
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                other => value.push(other),
            }
        }
        labels.push((key.trim_start_matches(',').to_owned(), value));
        rest = &after[end..];
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_and_without_labels_are_read() {
        let scrape = Scrape {
            text: "# HELP a_total A.\n# TYPE a_total counter\n\
                   a_total{method=\"/x.Y/Z\",code=\"OK\"} 3\n\
                   a_total{method=\"/x.Y/Z\",code=\"NOT_FOUND\"} 2\n\
                   b{path=\"q\\\"uote\"} 1.5\nc 7\n"
                .into(),
        };
        assert_eq!(scrape.sum("a_total", &[("method", "/x.Y/Z")]), Some(5.0));
        assert_eq!(scrape.sum("a_total", &[("code", "OK")]), Some(3.0));
        assert_eq!(scrape.sum("b", &[("path", "q\"uote")]), Some(1.5));
        assert_eq!(scrape.sum("c", &[]), Some(7.0));
        assert_eq!(scrape.sum("a_total", &[("code", "UNKNOWN")]), None);
        assert!(scrape.has_help("a_total") && !scrape.has_help("c"));
    }
}
