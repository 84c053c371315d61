#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

use std::io::{self, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;
use outrider_accesslog::{Format, Record, Writer, WriterOptions};

/// Polls `f` until it is true or a few seconds pass.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn fast() -> WriterOptions {
    WriterOptions {
        reopen_check_interval: Duration::from_millis(20),
        ..WriterOptions::default()
    }
}

#[test]
fn json_lines_to_a_file_parse_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let path = path.to_str().unwrap();
    let f = Format::json(&[
        ("code".into(), "%RESPONSE_CODE%".into()),
        ("path".into(), "%REQ(:PATH)%".into()),
    ])
    .unwrap();
    let req = HeaderMap::new();
    {
        let w = Writer::open(path).unwrap();
        for i in 0..100u16 {
            let p = format!("/item/{i}");
            let rec = Record {
                response_code: 200 + i,
                path: Some(&p),
                ..Record::new(SystemTime::now(), &req)
            };
            let mut line = String::new();
            f.write(&rec, &mut line);
            w.log(line);
        }
        assert_eq!(w.dropped(), 0);
    }
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 100);
    assert_eq!(lines[7]["code"], 207);
    assert_eq!(lines[7]["path"], "/item/7");
}

#[test]
fn text_lines_to_a_file_match() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let path = path.to_str().unwrap();
    let req = HeaderMap::new();
    let rec = Record {
        method: Some("POST"),
        path: Some("/x"),
        response_code: 503,
        response_flags: "UO",
        ..Record::new(SystemTime::now(), &req)
    };
    {
        let w = Writer::open(path).unwrap();
        let mut line = String::new();
        Format::envoy_default().write(&rec, &mut line);
        w.log(line);
        // A line without a newline gets one.
        w.log("plain".to_string());
    }
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with('['), "{}", lines[0]);
    assert!(
        lines[0].contains("] \"POST /x -\" 503 UO 0 0 0 - \"-\" \"-\" \"-\" \"-\" \"-\""),
        "{}",
        lines[0]
    );
    assert_eq!(lines[1], "plain");
}

#[test]
fn reopens_after_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let w = Writer::open_with(path.to_str().unwrap(), &fast()).unwrap();
    w.log("before\n".into());
    assert!(eventually(
        || std::fs::read_to_string(&path).is_ok_and(|t| t == "before\n")
    ));
    std::fs::rename(&path, &rotated).unwrap();
    let mut n = 0;
    assert!(eventually(|| {
        n += 1;
        w.log(format!("after {n}\n"));
        std::fs::read_to_string(&path).is_ok_and(|t| t.contains("after"))
    }));
    drop(w);
    let old = std::fs::read_to_string(&rotated).unwrap();
    let new = std::fs::read_to_string(&path).unwrap();
    assert!(old.starts_with("before\n"));
    assert!(!new.contains("before"));
    // Every line landed in exactly one of the two files.
    assert_eq!(old.lines().count() + new.lines().count(), n + 1);
}

/// A sink that blocks every write until the test lets it go.
struct Gate(mpsc::Receiver<()>);

impl Write for Gate {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = self.0.recv();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn full_queue_drops_and_counts() {
    let (open, gate) = mpsc::channel();
    let opts = WriterOptions {
        queue_capacity: 2,
        ..fast()
    };
    let w = Writer::from_write(Gate(gate), &opts).unwrap();
    // The thread takes at most one line off the queue and then blocks in write, so of 10 lines
    // at most 3 are accepted.
    for i in 0..10 {
        w.log(format!("line {i}\n"));
    }
    assert!(w.dropped() >= 7, "dropped {}", w.dropped());
    // Let every pending write through so drop can flush and join.
    drop(open);
    let dropped = w.dropped();
    drop(w);
    assert!(dropped <= 10);
}

#[test]
fn stdout_and_stderr_open() {
    let w = Writer::open("/dev/stderr").unwrap();
    w.log(String::new());
    drop(w);
    assert!(Writer::open("/dev/stdout").is_ok());
}
