//! Token lookup, the tokens file's parser and `create`, and the live re-read.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use super::*;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("cutover-tokens-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn entry(name: &str, role: &str, token: &str) -> String {
    format!(
        "[[token]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
        hex(&digest(token))
    )
}

#[test]
fn digest_is_sha256() {
    // The FIPS 180-2 test vector.
    assert_eq!(
        hex(&digest("abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn keyring_finds_each_token_by_its_digest_and_nothing_else() {
    let admin = Token::new("a".repeat(64));
    let text = entry("ci", "operator", &"c".repeat(64)) + &entry("grafana", "viewer", &"g".repeat(64));
    let named = file::parse(Path::new("tokens.toml"), &text).unwrap();
    let k = Keyring::new(&admin, &named);
    assert_eq!(k.len(), 3);
    let who = |t: &str| k.find(t).map(|i| (i.name.clone(), i.role));
    assert_eq!(who(&"a".repeat(64)), Some(("admin".into(), Role::Admin)));
    assert_eq!(who(&"c".repeat(64)), Some(("ci".into(), Role::Operator)));
    assert_eq!(who(&"g".repeat(64)), Some(("grafana".into(), Role::Viewer)));
    assert_eq!(who(&"g".repeat(63)), None);
    assert_eq!(who(""), None);
    // The digest itself is not the token.
    assert_eq!(who(&hex(&digest(&"c".repeat(64)))), None);
}

#[test]
fn malformed_files_name_the_line_and_key() {
    let p = Path::new("/etc/cutover/tokens.toml");
    let good = entry("ci", "operator", &"c".repeat(64));
    let cases: Vec<(String, usize, &str, &str)> = vec![
        (
            format!(
                "{good}\n[[token]]\nname = \"x\"\nrole = \"boss\"\nsha256 = \"{}\"\n",
                "0".repeat(64)
            ),
            8,
            "token[1].role",
            "unknown role \"boss\"",
        ),
        (
            good.replace("\"ci\"", "\"c i\""),
            2,
            "token[0].name",
            "invalid token name",
        ),
        (
            good.replace("\"ci\"", "\"admin\""),
            2,
            "token[0].name",
            "admin token file",
        ),
        (format!("{good}{good}"), 6, "token[1].name", "already on line 1"),
        (
            good.replace("sha256 = \"", "sha256 = \"zz"),
            4,
            "token[0].sha256",
            "64 hex characters",
        ),
        (
            format!("{good}colour = 1\n"),
            5,
            "token[0].colour",
            "unknown field `colour`",
        ),
        (
            good.replace("role = \"operator\"\n", ""),
            1,
            "token[0]",
            "missing field `role`",
        ),
        (
            format!("{good}created = \"yesterday\"\n"),
            5,
            "token[0].created",
            "RFC 3339",
        ),
        (format!("{good}name = \n"), 5, "", ""),
        ("role = 3\n".into(), 1, "role", "unknown field"),
    ];
    let mut wrong = Vec::new();
    for (text, line, key, msg) in cases {
        let e = file::parse(p, &text).expect_err(&text);
        let starts = e.to_string().starts_with(&format!("/etc/cutover/tokens.toml:{line}"));
        if (e.line, e.key.as_str()) != (line, key) || !e.message.contains(msg) || !starts {
            wrong.push(format!("want line {line} key {key:?} {msg:?}, got: {e}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    let dup_token = entry("a", "viewer", &"x".repeat(64)) + &entry("b", "admin", &"x".repeat(64));
    let e = file::parse(p, &dup_token).unwrap_err();
    assert!(e.message.contains("the same token as \"a\""), "{e}");
    assert!(file::parse(p, "# nothing yet\n").unwrap().is_empty());
}

#[test]
fn create_appends_a_hash_refuses_duplicates_and_exposed_files() {
    let d = Dir::new("create");
    let path = d.0.join("sub/tokens.toml");
    let a = file::create(&path, "ci", Role::Operator).unwrap();
    assert_eq!(a.token.len(), 64);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(&a.token), "plain token stored:\n{text}");
    assert!(text.contains(&hex(&digest(&a.token))));
    let b = file::create(&path, "grafana", Role::Viewer).unwrap();
    let entries = file::read(&path).unwrap().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1].line, b.entry.line);
    assert_eq!((entries[1].name.as_str(), entries[1].role), ("grafana", Role::Viewer));
    assert!(entries[1].created.is_some());

    let before = std::fs::read_to_string(&path).unwrap();
    let e = file::create(&path, "ci", Role::Admin).unwrap_err().to_string();
    assert!(e.contains("a token named \"ci\" exists already"), "{e}");
    assert!(e.contains(&format!("tokens.toml:{}", entries[0].line)), "{e}");
    assert!(file::create(&path, "admin", Role::Admin).is_err());
    assert!(file::create(&path, "", Role::Admin).is_err());
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        before,
        "a refused create wrote nothing"
    );

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let e = file::create(&path, "new", Role::Viewer).unwrap_err().to_string();
    assert!(e.contains("mode 640") && e.contains("chmod 600"), "{e}");
    let e = file::read(&path).unwrap_err().to_string();
    assert!(e.contains("chmod 600"), "{e}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
}

#[test]
fn delete_removes_only_that_entry_and_keeps_comments_and_mode() {
    let d = Dir::new("delete");
    let path = d.0.join("tokens.toml");
    let a = file::create(&path, "ci", Role::Operator).unwrap();
    let b = file::create(&path, "grafana", Role::Viewer).unwrap();
    let c = file::create(&path, "deploy", Role::Admin).unwrap();
    let removed = file::delete(&path, "grafana").unwrap();
    assert_eq!((removed.name.as_str(), removed.role), ("grafana", Role::Viewer));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("# Named admin tokens"), "{text}");
    assert!(!text.contains(&hex(&b.entry.sha256)), "{text}");
    assert!(!text.contains("\n\n\n"), "{text}");
    let names: Vec<String> = file::read(&path)
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["ci", "deploy"]);
    assert!(text.contains(&hex(&a.entry.sha256)) && text.contains(&hex(&c.entry.sha256)));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let e = file::delete(&path, "grafana").unwrap_err().to_string();
    assert!(
        e.contains("no token named \"grafana\"") && e.contains("ci, deploy"),
        "{e}"
    );
    let e = file::delete(&path, "admin").unwrap_err().to_string();
    assert!(e.contains("admin.token"), "{e}");
    file::delete(&path, "deploy").unwrap();
    file::delete(&path, "ci").unwrap();
    assert!(file::read(&path).unwrap().unwrap().is_empty());
}

#[test]
fn a_running_set_takes_new_tokens_at_once_and_keeps_the_old_set_over_a_broken_file() {
    let d = Dir::new("live");
    let admin_file = d.0.join("admin.token");
    let tokens_file = d.0.join("tokens.toml");
    let cfg = cutover_config::AdminConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token_file: admin_file.clone(),
        tokens_file: tokens_file.clone(),
        address_file: None,
        tls: None,
    };
    let t = Tokens::load(&cfg).unwrap();
    let admin = std::fs::read_to_string(&admin_file).unwrap().trim().to_string();
    assert_eq!(t.authenticate(&admin).map(|i| i.role), Some(Role::Admin));

    // A miss looks at the file: a token made a moment ago works on its first use.
    let ci = file::create(&tokens_file, "ci", Role::Operator).unwrap();
    assert_eq!(t.authenticate(&ci.token).map(|i| i.name), Some("ci".into()));

    // Broken: the previous set stays, the new entry is not taken.
    let good = std::fs::read_to_string(&tokens_file).unwrap();
    let extra = "x".repeat(40);
    std::fs::write(
        &tokens_file,
        format!("{good}{}oops = [\n", entry("late", "viewer", &extra)),
    )
    .unwrap();
    assert_eq!(t.authenticate(&extra), None);
    assert_eq!(t.authenticate(&ci.token).map(|i| i.role), Some(Role::Operator));

    // Fixed: taken again.
    std::fs::write(&tokens_file, format!("{good}{}", entry("late", "viewer", &extra))).unwrap();
    assert_eq!(t.authenticate(&extra).map(|i| i.role), Some(Role::Viewer));

    // At start, a broken file is an error naming it.
    std::fs::write(&tokens_file, "[[token]]\nname = 1\n").unwrap();
    let e = Tokens::load(&cfg).err().unwrap().to_string();
    assert!(e.contains("tokens.toml:2") && e.contains("token[0].name"), "{e}");
}
