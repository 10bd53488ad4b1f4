//! `[services.NAME.run]`'s template: placeholders known, and every replica told its port.

use super::*;
use crate::validate::run::{distance, placeholders};

const MANAGED: &str = "[services.chat]\nlisten = \"127.0.0.1:8080\"\n[services.chat.run]\n";

#[test]
fn placeholders_are_plain_words_in_braces() {
    assert_eq!(placeholders("--port={port}/{version}"), vec!["port", "version"]);
    assert_eq!(placeholders(r#"{"a": 1}"#), Vec::<&str>::new());
    assert_eq!(placeholders("{gpu"), Vec::<&str>::new());
    assert_eq!(distance("prot", "port"), 2);
}

#[test]
fn an_unknown_placeholder_names_its_line_key_and_the_known_ones() {
    let text = format!(
        "{MANAGED}command = [\n  \"serve\",\n  \"--port\", \"{{prot}}\",\n]\nports = {{ blue = [9001], green = [9002] }}\n"
    );
    let e = check(&text).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (6, "services.chat.run.command[2]"), "{e}");
    assert!(e.message.contains("unknown placeholder {prot}"), "{e}");
    assert!(e.message.contains("did you mean {port}?"), "{e}");
    assert!(e.message.contains("{version}, {port}, {color}, {replica}"), "{e}");
    let text = format!(
        "{MANAGED}command = [\"serve\", \"--port\", \"{{port}}\"]\nenv = {{ CUDA_VISIBLE_DEVICES = \"{{gpu}}\" }}\nports = {{ blue = [9001], green = [9002] }}\n"
    );
    let e = check(&text).unwrap_err();
    assert_eq!(
        (e.line, e.key.as_str()),
        (5, "services.chat.run.env.CUDA_VISIBLE_DEVICES"),
        "{e}"
    );
    assert!(e.message.contains("{gpu}"), "{e}");
}

#[test]
fn a_command_never_told_its_port_is_an_error_unless_env_tells_it() {
    let text =
        format!("{MANAGED}command = [\"serve\", \"{{version}}\"]\nports = {{ blue = [9001], green = [9002] }}\n");
    let e = check(&text).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (4, "services.chat.run.command"), "{e}");
    assert!(e.message.contains("no {port}"), "{e}");
    let text = format!(
        "{MANAGED}command = [\"serve\"]\nenv = {{ PORT = \"{{port}}\" }}\nports = {{ blue = [9001], green = [9002] }}\n"
    );
    check(&text).unwrap();
}

#[test]
fn blue_and_green_on_one_endpoint_is_an_error_at_the_green_entry() {
    let text = "[services.chat]\nlisten = \"127.0.0.1:8080\"\n[services.chat.blue]\nendpoints = [\"127.0.0.1:9001\"]\n[services.chat.green]\nendpoints = [\"127.0.0.1:9002\",\n  \"127.0.0.1:9001\"]\n";
    let e = check(text).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (7, "services.chat.green.endpoints"), "{e}");
    assert!(e.message.contains("both blue and green"), "{e}");
    let allowed = text.replace(
        "[services.chat.blue]",
        "allow_shared_endpoints = true\n[services.chat.blue]",
    );
    check(&allowed).unwrap();
}
