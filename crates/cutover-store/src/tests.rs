use super::*;

fn temp_store() -> (Store, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("cutover-store-test-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cutover.db");
    (Store::open(&path).unwrap(), path)
}

fn rand_suffix() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn switch(service: &str, gen: u64, to: Color) -> SwitchRecord<'_> {
    SwitchRecord {
        service,
        expected_generation: gen,
        to,
        kind: SwitchKind::Switched,
        actor: "test",
        reason: "because",
        release_id: None,
    }
}

#[test]
fn a_step_keeps_the_live_color_and_is_a_compare_and_swap_with_its_own_history_line() {
    let (s, _) = temp_store();
    s.ensure_service("chat", Some("v1"), Some("v2")).unwrap();
    s.switch(&switch("chat", 0, Color::Blue)).unwrap();
    let step = SwitchRecord {
        kind: SwitchKind::Stepped,
        ..switch("chat", 1, Color::Green)
    };
    let st = s.step(&step).unwrap();
    assert_eq!((st.live, st.generation), (Some(Color::Blue), 2), "live unchanged, +1");
    assert!(matches!(
        s.step(&step),
        Err(StoreError::Conflict { expected: 1, actual: 2 })
    ));
    let h = s.history("chat", 1).unwrap();
    assert_eq!(
        (h[0].kind, h[0].from, h[0].to, h[0].generation, h[0].version.as_deref()),
        (
            HistoryKind::Stepped,
            Some(Color::Blue),
            Some(Color::Green),
            2,
            Some("v2")
        )
    );
}

#[test]
fn switch_is_compare_and_swap_and_recorded() {
    let (s, _) = temp_store();
    let st = s.ensure_service("chat", Some("v1"), Some("v2")).unwrap();
    assert_eq!((st.live, st.generation), (None, 0));
    let st = s.switch(&switch("chat", 0, Color::Blue)).unwrap();
    assert_eq!((st.live, st.generation), (Some(Color::Blue), 1));
    match s.switch(&switch("chat", 0, Color::Green)) {
        Err(StoreError::Conflict { expected: 0, actual: 1 }) => {}
        other => panic!("expected conflict, got {other:?}"),
    }
    let st = s.switch(&switch("chat", 1, Color::Green)).unwrap();
    assert_eq!(st.generation, 2);
    let h = s.history("chat", 10).unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(
        (h[0].from, h[0].to, h[0].kind, h[0].generation),
        (Some(Color::Blue), Some(Color::Green), HistoryKind::Switched, 2)
    );
    assert_eq!(h[0].version.as_deref(), Some("v2"));
    assert_eq!(h[1].from, None);
}

#[test]
fn last_live_version_skips_labels_that_never_went_live() {
    let (s, _) = temp_store();
    s.ensure_service("chat", None, None).unwrap();
    assert_eq!(s.last_live_version("chat", Color::Green).unwrap(), None);
    s.set_version("chat", Color::Blue, Some("v1")).unwrap();
    s.switch(&switch("chat", 0, Color::Blue)).unwrap();
    s.set_version("chat", Color::Green, Some("v2")).unwrap();
    s.switch(&switch("chat", 1, Color::Green)).unwrap();
    s.set_version("chat", Color::Blue, Some("v3")).unwrap();
    s.switch(&switch("chat", 2, Color::Blue)).unwrap();
    // An aborted release into green wrote its label and never went live.
    s.set_version("chat", Color::Green, Some("bad")).unwrap();
    assert_eq!(
        s.last_live_version("chat", Color::Green).unwrap().as_deref(),
        Some("v2")
    );
    assert_eq!(s.last_live_version("chat", Color::Blue).unwrap().as_deref(), Some("v3"));
}

#[test]
fn state_survives_reopen_and_config_versions_do_not_override() {
    let (s, path) = temp_store();
    s.ensure_service("chat", Some("v1"), None).unwrap();
    s.switch(&switch("chat", 0, Color::Blue)).unwrap();
    s.set_version("chat", Color::Green, Some("v7")).unwrap();
    drop(s);
    let s = Store::open(&path).unwrap();
    let st = s.ensure_service("chat", Some("other"), Some("other")).unwrap();
    assert_eq!(st.live, Some(Color::Blue));
    assert_eq!(st.generation, 1);
    assert_eq!(st.blue_version.as_deref(), Some("v1"));
    assert_eq!(st.green_version.as_deref(), Some("v7"));
    assert_eq!(s.integrity_check().unwrap(), "ok");
}

#[test]
fn fleet_release_ids_start_past_a_floor_and_imports_keep_theirs() {
    let (s, _) = temp_store();
    let doc = serde_json::json!({"phase": "provisioning"});
    assert_eq!(s.insert_release_from("chat", &doc, 40).unwrap(), 40);
    // Past the floor, the next id follows the highest.
    assert_eq!(s.insert_release_from("chat", &doc, 1).unwrap(), 41);
    s.put_release(90, "chat", &serde_json::json!({"phase": "verifying"}), false)
        .unwrap();
    s.put_release(90, "chat", &serde_json::json!({"phase": "completed"}), true)
        .unwrap();
    assert_eq!(s.release(90).unwrap().unwrap().1["phase"], "completed");
    assert_eq!(s.insert_release("chat", &doc).unwrap(), 91);
}

#[test]
fn releases_and_processes_round_trip() {
    let (s, _) = temp_store();
    s.ensure_service("chat", None, None).unwrap();
    let id = s
        .insert_release("chat", &serde_json::json!({"phase": "provisioning"}))
        .unwrap();
    assert_eq!(s.unfinished_releases("chat").unwrap().len(), 1);
    s.update_release(id, &serde_json::json!({"phase": "completed"}), true)
        .unwrap();
    assert!(s.unfinished_releases("chat").unwrap().is_empty());
    assert_eq!(s.release(id).unwrap().unwrap().1["phase"], "completed");
    let p = ProcessRecord {
        service: "chat".into(),
        color: Color::Green,
        replica: 0,
        port: 9002,
        pid: 42,
        start_time: 7,
        version: "v2".into(),
        log: Some("/logs/chat-green-0-20261127T100000.000Z.log".into()),
        started_at: Some("2026-11-27T10:00:00Z".into()),
    };
    s.put_process(&p).unwrap();
    assert_eq!(s.processes("chat").unwrap(), vec![p]);
    s.remove_processes("chat", Color::Green).unwrap();
    assert!(s.processes("chat").unwrap().is_empty());
}

/// A store file from before logs were kept per start gets the new columns at open, and
/// its rows read back with them empty.
#[test]
fn an_older_processes_table_gains_the_new_columns() {
    let (s, path) = temp_store();
    drop(s);
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP TABLE processes; CREATE TABLE processes (service TEXT NOT NULL, color TEXT NOT NULL, replica INTEGER NOT NULL, port INTEGER NOT NULL, pid INTEGER NOT NULL, start_time INTEGER NOT NULL, version TEXT NOT NULL, PRIMARY KEY (service, color, replica));
         INSERT INTO processes VALUES ('chat', 'blue', 0, 9001, 42, 7, 'v1');",
    )
    .unwrap();
    drop(conn);
    let s = Store::open(&path).unwrap();
    let p = s.processes("chat").unwrap();
    assert_eq!((p[0].pid, p[0].log.clone(), p[0].started_at.clone()), (42, None, None));
    drop(s);
    // Opening again finds the columns there and adds nothing.
    Store::open(&path).unwrap();
}

/// The API shows these strings; the enums must write exactly what the strings were.
#[test]
fn kinds_and_colors_keep_their_stored_and_json_text() {
    for k in HistoryKind::ALL {
        assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
    }
    assert_eq!(serde_json::to_value(Color::Green).unwrap(), "green");
    let (s, _) = temp_store();
    s.ensure_service("chat", None, None).unwrap();
    s.switch(&SwitchRecord {
        kind: SwitchKind::RolledBack,
        ..switch("chat", 0, Color::Green)
    })
    .unwrap();
    s.record_event(&EventRecord {
        service: "chat",
        kind: HistoryKind::ReleaseInterrupted,
        color: Some(Color::Blue),
        version: Some("v2"),
        actor: "controller",
        reason: "restart",
        release_id: Some(3),
    })
    .unwrap();
    let raw: Vec<(String, Option<String>)> = s
        .conn()
        .prepare("SELECT kind, to_color FROM history ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<std::result::Result<_, _>>()
        .unwrap();
    assert_eq!(
        raw,
        vec![
            ("rolled_back".to_string(), Some("green".to_string())),
            ("release_interrupted".to_string(), Some("blue".to_string()))
        ]
    );
    let h = s.history("chat", 10).unwrap();
    assert_eq!(h[0].kind, HistoryKind::ReleaseInterrupted);
    assert_eq!(h[0].from, Some(Color::Green), "from is the stored live color");
}

/// A file written before the shared types existed, with every spelling the store wrote then
/// (raw SQL, the schema of that time): it opens, and each row reads back as the same words.
#[test]
fn a_file_with_the_stored_spellings_of_before_still_loads() {
    let (s, path) = temp_store();
    drop(s);
    std::fs::remove_file(&path).unwrap();
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(schema::SCHEMA).unwrap();
    let mut st = conn
        .prepare(
            "INSERT INTO history (service, at, kind, from_color, to_color, generation, version, actor, reason, release_id)
             VALUES ('chat', '2026-11-27T10:00:00Z', ?1, 'blue', 'green', 1, 'v2', 'alice', 'why', NULL)",
        )
        .unwrap();
    let texts = [
        "switched",
        "rolled_back",
        "release_started",
        "release_approved",
        "release_completed",
        "release_aborted",
        "release_rolled_back",
        "release_interrupted",
        "scaled_down",
        "process_exited",
        "process_restarted",
        "reconfigured",
        "stopped",
        "stepped",
    ];
    for t in texts {
        st.execute(params![t]).unwrap();
    }
    drop(st);
    conn.execute_batch(
        "INSERT INTO services VALUES ('chat', 'green', 3, 'v1', 'v2', '2026-11-27T10:00:00Z');
         INSERT INTO processes VALUES ('chat', 'blue', 0, 9001, 42, 7, 'v1', NULL, NULL);",
    )
    .unwrap();
    drop(conn);

    let s = Store::open(&path).unwrap();
    let st = s.ensure_service("chat", None, None).unwrap();
    assert_eq!((st.live, st.generation), (Some(Color::Green), 3));
    let mut h = s.history("chat", 100).unwrap();
    h.reverse();
    let kinds: Vec<&str> = h.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, texts);
    assert_eq!(h.iter().map(|e| e.kind).collect::<Vec<_>>(), HistoryKind::ALL);
    assert!(h
        .iter()
        .all(|e| (e.from, e.to) == (Some(Color::Blue), Some(Color::Green))));
    assert_eq!(s.processes("chat").unwrap()[0].color, Color::Blue);
    assert_eq!(
        s.last_live_version("chat", Color::Green).unwrap().as_deref(),
        Some("v2")
    );
}

/// A word the store does not know is an error naming it, not a silent default.
#[test]
fn an_unknown_word_in_a_row_is_an_error_that_names_it() {
    let (s, _) = temp_store();
    s.ensure_service("chat", None, None).unwrap();
    s.conn()
        .execute_batch(
            "INSERT INTO history (service, at, kind, from_color, to_color, generation, version, actor, reason, release_id)
             VALUES ('chat', '2026-11-27T10:00:00Z', 'forced', NULL, 'blue', 1, NULL, 'a', 'r', NULL)",
        )
        .unwrap();
    let e = s.history("chat", 10).unwrap_err().to_string();
    assert!(e.contains("\"forced\""), "{e}");
}
