//! What applying a service's document from etcd comes to, decided apart from doing it:
//! parse, order (only ever a higher generation; old news against a restore), validate (a
//! live color this router can route to). The sync's `apply` carries the plan out.

use cutover_fleet::doc::{ServiceDoc, Versions};
use cutover_proxy::Color;

use crate::fleet::link::Applied;

/// How a document was seen: a watch event, or a full read at a revision (one that went
/// behind what the watch had reached means etcd was restored from an older state).
#[derive(Debug, Clone, Copy)]
pub(super) enum Seen {
    Event,
    Read { revision: i64, went_back: bool },
}

/// A document older than the one this router applied last is old news, not a restore,
/// when it was already superseded where it was seen: a watch event from before this
/// router's own newer write (two quick switches here: the watch brings the first after
/// the second was published), or a read taken before that write. A read that went back
/// in revisions, or one taken after the write, that still shows an older generation is
/// a restore.
fn superseded(applied: Option<Applied>, mod_revision: i64, seen: Seen) -> bool {
    let Some(applied) = applied else { return false };
    match seen {
        Seen::Event => mod_revision < applied.mod_revision,
        Seen::Read { revision, went_back } => !went_back && revision < applied.mod_revision,
    }
}

/// What this router serves of a service, as far as applying a document goes.
#[derive(Debug, Clone)]
pub(super) struct Served {
    pub(super) generation: u64,
    pub(super) weight: u8,
    pub(super) versions: Versions,
    /// The colors with endpoints in this router's configuration.
    pub(super) with_endpoints: Vec<Color>,
}

/// What applying a stored document to a service comes to, decided before anything is
/// touched ([`plan`]); [`apply`] carries it out.
#[derive(Debug, PartialEq)]
pub(super) enum Plan {
    /// Old news: a document this router already replaced.
    Nothing,
    /// Served already: only the document's revision is remembered.
    Record(Applied),
    /// etcd holds an older generation than this router serves: ours is kept, and reported.
    Ahead {
        applied: Applied,
        stored: u64,
        serving: u64,
    },
    /// Cannot be applied: the ack says why, the old state stays.
    Reject {
        generation: Option<u64>,
        reason: String,
    },
    Install(Install),
}

#[derive(Debug, PartialEq)]
pub(super) struct Install {
    pub(super) applied: Applied,
    pub(super) live: Color,
    pub(super) weight: u8,
    /// The colors whose version changes, with the new one.
    pub(super) versions: Vec<(Color, Option<String>)>,
    /// The local snapshot's new state.
    pub(super) state: cutover_store::ServiceState,
    /// The generation served before (what the local history's switch line compares).
    pub(super) previous: u64,
    /// This router wrote the document (its id is on it) and had not published it: a switch
    /// whose answer was not confirmed but which committed. Its history line comes from etcd.
    pub(super) own: bool,
    pub(super) actor: String,
}

fn version(v: &Versions, c: Color) -> &Option<String> {
    match c {
        Color::Blue => &v.blue,
        Color::Green => &v.green,
    }
}

/// Decides what a stored document (`parsed`, at `mod_revision`) does to a service that
/// serves `served`. Only ever a higher generation applies; the same generation only when
/// its weight differs (a router restarted during a step: a snapshot keeps no weight).
pub(super) fn plan(
    name: &str,
    parsed: Result<ServiceDoc, String>,
    mod_revision: i64,
    served: &Served,
    previous: Option<Applied>,
    seen: Seen,
    me: &str,
) -> Plan {
    let doc = match parsed {
        Ok(d) => d,
        Err(reason) => {
            return Plan::Reject {
                generation: None,
                reason,
            }
        }
    };
    let applied = Applied {
        generation: doc.generation.max(served.generation),
        mod_revision,
    };
    if doc.generation < served.generation {
        if superseded(previous, mod_revision, seen) {
            return Plan::Nothing;
        }
        // Never apply an older generation. The next switch here compares this document's
        // revision and writes a higher generation over it.
        return Plan::Ahead {
            applied,
            stored: doc.generation,
            serving: served.generation,
        };
    }
    if doc.generation == served.generation && doc.weight == served.weight {
        return Plan::Record(applied);
    }
    let generation = doc.generation;
    let reject = |reason: String| Plan::Reject {
        generation: Some(generation),
        reason,
    };
    let Some(live) = doc.live else {
        return reject("nothing live".into());
    };
    if !served.with_endpoints.contains(&live) {
        return reject(format!(
            "generation {generation} makes {live} live, which has no endpoints in this router's configuration"
        ));
    }
    let versions = Color::ALL
        .into_iter()
        .filter(|c| version(&doc.versions, *c) != version(&served.versions, *c))
        .map(|c| (c, version(&doc.versions, c).clone()))
        .collect();
    Plan::Install(Install {
        applied,
        live,
        weight: doc.weight,
        versions,
        state: cutover_store::ServiceState {
            name: name.to_string(),
            live: Some(live),
            generation,
            blue_version: doc.versions.blue,
            green_version: doc.versions.green,
        },
        previous: served.generation,
        own: doc.router == me,
        actor: doc.actor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_fleet::doc::Color as DocColor;

    fn served() -> Served {
        Served {
            generation: 5,
            weight: 0,
            versions: Versions {
                blue: Some("v1".into()),
                green: Some("v2".into()),
            },
            with_endpoints: vec![Color::Blue, Color::Green],
        }
    }

    fn doc(generation: u64, live: Option<DocColor>) -> ServiceDoc {
        ServiceDoc {
            generation,
            live,
            versions: Versions {
                blue: Some("v1".into()),
                green: Some("v3".into()),
            },
            weight: 0,
            config_hash: String::new(),
            updated_at: String::new(),
            actor: "alice".into(),
            router: "edge-2".into(),
        }
    }

    fn plan_of(d: Result<ServiceDoc, String>, served: &Served, seen: Seen) -> Plan {
        plan("chat", d, 120, served, Some(APPLIED), seen, "edge-1")
    }

    #[test]
    fn a_newer_generation_installs_only_the_versions_that_changed() {
        let Plan::Install(i) = plan_of(Ok(doc(6, Some(DocColor::Green))), &served(), Seen::Event) else {
            panic!("not installed");
        };
        assert_eq!(i.live, Color::Green);
        assert_eq!(i.versions, vec![(Color::Green, Some("v3".to_string()))]);
        assert_eq!((i.state.generation, i.previous), (6, 5));
        assert_eq!(i.state.live, Some(cutover_store::Color::Green));
        assert_eq!(i.applied.mod_revision, 120);
        assert!(!i.own, "written by another router");
        let mut mine = doc(6, Some(DocColor::Green));
        mine.router = "edge-1".into();
        let Plan::Install(i) = plan_of(Ok(mine), &served(), Seen::Event) else {
            panic!("not installed");
        };
        assert!(
            i.own,
            "this router's unconfirmed switch: its history line comes from etcd"
        );
    }

    #[test]
    fn the_same_generation_is_only_recorded_unless_its_weight_differs() {
        let same = plan_of(Ok(doc(5, Some(DocColor::Blue))), &served(), Seen::Event);
        assert_eq!(
            same,
            Plan::Record(Applied {
                generation: 5,
                mod_revision: 120
            })
        );
        let mut stepped = doc(5, Some(DocColor::Blue));
        stepped.weight = 10;
        assert!(matches!(plan_of(Ok(stepped), &served(), Seen::Event), Plan::Install(i) if i.weight == 10));
    }

    #[test]
    fn an_older_generation_is_old_news_or_reported_as_etcd_behind_never_applied() {
        let mut s = served();
        s.generation = 12;
        let late_event = plan(
            "chat",
            Ok(doc(10, Some(DocColor::Blue))),
            100,
            &s,
            Some(APPLIED),
            Seen::Event,
            "edge-1",
        );
        assert_eq!(late_event, Plan::Nothing);
        let restored = Seen::Read {
            revision: 80,
            went_back: true,
        };
        assert_eq!(
            plan_of(Ok(doc(10, Some(DocColor::Blue))), &s, restored),
            Plan::Ahead {
                applied: Applied {
                    generation: 12,
                    mod_revision: 120
                },
                stored: 10,
                serving: 12
            }
        );
    }

    #[test]
    fn a_document_that_cannot_be_served_is_rejected_with_why() {
        let bad = plan_of(Err("invalid JSON".into()), &served(), Seen::Event);
        assert_eq!(
            bad,
            Plan::Reject {
                generation: None,
                reason: "invalid JSON".into()
            }
        );
        assert_eq!(
            plan_of(Ok(doc(6, None)), &served(), Seen::Event),
            Plan::Reject {
                generation: Some(6),
                reason: "nothing live".into()
            }
        );
        let mut s = served();
        s.with_endpoints = vec![Color::Blue];
        let Plan::Reject { generation, reason } = plan_of(Ok(doc(6, Some(DocColor::Green))), &s, Seen::Event) else {
            panic!("applied a color without endpoints");
        };
        assert_eq!(generation, Some(6));
        assert!(reason.contains("makes green live, which has no endpoints"), "{reason}");
    }

    const APPLIED: Applied = Applied {
        generation: 11,
        mod_revision: 101,
    };

    #[test]
    fn a_late_event_of_a_document_this_router_already_replaced_is_old_news() {
        assert!(superseded(Some(APPLIED), 100, Seen::Event));
        assert!(
            !superseded(Some(APPLIED), 102, Seen::Event),
            "a newer write with an older generation"
        );
        assert!(!superseded(None, 100, Seen::Event), "nothing applied yet");
    }

    #[test]
    fn a_read_is_old_news_only_if_taken_before_this_routers_write_and_not_behind_the_watch() {
        let before_write = Seen::Read {
            revision: 100,
            went_back: false,
        };
        let after_write = Seen::Read {
            revision: 120,
            went_back: false,
        };
        let restored = Seen::Read {
            revision: 80,
            went_back: true,
        };
        assert!(superseded(Some(APPLIED), 95, before_write));
        assert!(
            !superseded(Some(APPLIED), 95, after_write),
            "restored with bumped revisions"
        );
        assert!(
            !superseded(Some(APPLIED), 70, restored),
            "restored to an older revision"
        );
    }
}
