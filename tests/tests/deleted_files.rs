//! Deleted files held open (the logrotate incident): the report names each one with the disk
//! space it still holds, as stat(2) of the open file shows it.

use std::{fs, os::unix::fs::MetadataExt, process::Command, time::Duration};

use tracer_tests::{ATTACH_TIMEOUT, Tracer, require_root, unique_dir, wait_until};

/// A process holds a 3 MiB log file that was then deleted: `deleted_files` has it, with its
/// size and its holder, and the descriptor carries `size_bytes`.
#[test]
fn deleted_file_held_open_is_reported_with_its_size() {
    require_root();
    let dir = unique_dir(None, "deleted");
    let path = dir.join("app.log.1");
    fs::write(&path, vec![b'x'; 3 << 20]).expect("write the log");
    let mut holder = Command::new("sh")
        .args(["-c", "exec 3<\"$0\"; exec sleep 60"])
        .arg(&path)
        .spawn()
        .expect("start sh");
    let pid = holder.id();
    wait_until(
        Duration::from_secs(10),
        "sleep holding the log as fd 3",
        || {
            fs::read_link(format!("/proc/{pid}/fd/3")).is_ok_and(|l| l == path)
                && fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c == "sleep\n")
        },
    );
    fs::remove_file(&path).expect("delete the log");
    let truth = fs::metadata(format!("/proc/{pid}/fd/3")).expect("stat the open file");

    let mut tracer = Tracer::attach(pid, &[]);
    tracer.wait_attached(ATTACH_TIMEOUT);
    let report = tracer.stop();
    let _ = holder.kill();
    let _ = holder.wait();
    let ctx = report.context();

    let files = report.json["deleted_files"]
        .as_array()
        .unwrap_or_else(|| panic!("no deleted_files\n{ctx}"));
    assert_eq!(files.len(), 1, "{ctx}");
    let file = &files[0];
    assert_eq!(file["path"], path.to_str().unwrap(), "{ctx}");
    assert_eq!(file["size_bytes"].as_u64(), Some(truth.size()), "{ctx}");
    assert_eq!(file["size_bytes"].as_u64(), Some(3 << 20), "{ctx}");
    assert_eq!(
        file["disk_bytes"].as_u64(),
        Some(truth.blocks() * 512),
        "{ctx}"
    );
    assert_eq!(file["descriptors"].as_u64(), Some(1), "{ctx}");
    assert_eq!(file["pids"], serde_json::json!([pid]), "{ctx}");
    let fd3 = report.json["open_descriptors"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["pid"] == pid && d["fd"] == 3))
        .unwrap_or_else(|| panic!("no fd 3\n{ctx}"));
    assert_eq!(fd3["deleted"], true, "{ctx}");
    assert_eq!(fd3["size_bytes"].as_u64(), Some(3 << 20), "{ctx}");
}
