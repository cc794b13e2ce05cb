use std::ffi::{OsStr, OsString};
use std::path::Path;

use super::credentials::{expand_home, home_dir};
use super::storage::hidden_prefix;
use super::*;

fn expand(path: &str, home: Option<&str>) -> Result<PathBuf, GcpError> {
    expand_home(Path::new(path), home.map(Path::new))
}

#[test]
fn a_leading_tilde_is_the_home_directory() {
    let home = Some("/home/ana");
    assert_eq!(
        expand("~/key.json", home).unwrap(),
        Path::new("/home/ana/key.json")
    );
    assert_eq!(
        expand("~/keys/sa.json", home).unwrap(),
        Path::new("/home/ana/keys/sa.json")
    );
    assert_eq!(
        expand("~//key.json", home).unwrap(),
        Path::new("/home/ana/key.json")
    );
    assert_eq!(expand("~", home).unwrap(), Path::new("/home/ana"));
    assert_eq!(expand("~/", home).unwrap(), Path::new("/home/ana"));
    assert_eq!(
        expand("~/key.json", Some("/home/ana/")).unwrap(),
        Path::new("/home/ana/key.json")
    );
}

#[test]
fn other_paths_are_left_alone() {
    for home in [Some("/home/ana"), None] {
        for path in [
            "/etc/key.json",
            "key.json",
            "./key.json",
            "keys/~/key.json",
            "/~/key.json",
            "~ana/key.json",
            "~key.json",
            "",
        ] {
            assert_eq!(expand(path, home).unwrap(), Path::new(path), "{path}");
        }
    }
}

#[test]
fn a_tilde_without_a_home_names_the_field() {
    for home in [None, Some("")] {
        for path in ["~/key.json", "~"] {
            match expand(path, home) {
                Err(GcpError::Credentials { field, message }) => {
                    assert_eq!(field, "service_account_file");
                    assert!(message.contains("HOME"), "{message}");
                    assert!(message.contains(path), "{message}");
                }
                other => panic!("{path} with {home:?}: {other:?}"),
            }
        }
    }
}

#[test]
fn from_file_expands_the_tilde() {
    // The home directory of this process, whatever it is: the error names the
    // expanded path, never `~`.
    let Some(home) = home_dir() else {
        return;
    };
    let missing = format!("blocks-no-such-key-{}.json", uuid::Uuid::new_v4().simple());
    match ServiceAccount::from_file(&Path::new("~").join(&missing)) {
        Err(GcpError::Credentials { field, message }) => {
            assert_eq!(field, "service_account_file");
            let expanded = home.join(&missing);
            assert!(
                message.contains(&expanded.display().to_string()),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn temporary_names_are_hidden_beside_the_target() {
    assert_eq!(
        hidden_prefix(OsStr::new("copy.bin")),
        OsString::from(".copy.bin.")
    );
}
