//! Policy: a filterspec paired with a constraint (read-only, allowed,
//! denied, affinity, anti-affinity), given at creation, composition (Join)
//! or use.
//!
//! Owns the constraint vocabulary, the policy's JSON and compact string
//! forms, the rule of which constraint may be attached to what and when,
//! and the placement check for (anti-)affinity. A constraint that is
//! unknown or cannot be satisfied is an error at the time it is given,
//! never silently ignored. Must not touch storage, backends, handles or
//! any I/O: enforcement of read-only disks or network allow/deny lists
//! belongs to the components that own those elements.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::filter::{Filter, FilterError, Filterable};

/// What a policy requires of the elements its filter selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Constraint {
    /// The selected storage may be used but not written.
    ReadOnly,
    /// Only the selected targets may be reached.
    Allowed,
    /// The selected targets may not be reached.
    Denied,
    /// Place next to at least one selected peer.
    Affinity,
    /// Place next to no selected peer.
    AntiAffinity,
}

impl Constraint {
    pub const ALL: [Constraint; 5] = [
        Constraint::ReadOnly,
        Constraint::Allowed,
        Constraint::Denied,
        Constraint::Affinity,
        Constraint::AntiAffinity,
    ];

    /// The canonical name, as accepted by [`FromStr`].
    pub fn as_str(self) -> &'static str {
        match self {
            Constraint::ReadOnly => "read-only",
            Constraint::Allowed => "allowed",
            Constraint::Denied => "denied",
            Constraint::Affinity => "affinity",
            Constraint::AntiAffinity => "anti-affinity",
        }
    }

    /// Where this constraint may be given: the scopes, per target.
    ///
    /// | constraint | container | volume | network | image |
    /// | --- | --- | --- | --- | --- |
    /// | `read-only` | create (read-only rootfs) | join, use | — | join, use |
    /// | `allowed`, `denied` | create (permitted outgoing targets) | — | join, use | — |
    /// | `affinity`, `anti-affinity` | create (placement) | — | — | — |
    pub fn scopes(self, target: Target) -> &'static [Scope] {
        use Constraint::*;
        use Target::*;
        match (self, target) {
            (ReadOnly, Container) => &[Scope::Create],
            (ReadOnly, Volume | Image) => &[Scope::Join, Scope::Use],
            (Allowed | Denied, Container) => &[Scope::Create],
            (Allowed | Denied, Network) => &[Scope::Join, Scope::Use],
            (Affinity | AntiAffinity, Container) => &[Scope::Create],
            _ => &[],
        }
    }

    /// Where the constraint applies, for error messages.
    fn applies_to(self) -> &'static str {
        match self {
            Constraint::ReadOnly => {
                "read-only applies to a volume or image at join or use, \
                 or to a container's rootfs at create"
            }
            Constraint::Allowed | Constraint::Denied => {
                "allowed/denied apply to a network at join or use, \
                 or to a container's outgoing targets at create"
            }
            Constraint::Affinity | Constraint::AntiAffinity => {
                "placement constraints apply only to a container at create"
            }
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Constraint {
    type Err = PolicyError;

    /// Case-insensitive; `readonly` is an alias of `read-only`.
    fn from_str(s: &str) -> Result<Constraint, PolicyError> {
        let name = s.trim().to_ascii_lowercase();
        if name == "readonly" {
            return Ok(Constraint::ReadOnly);
        }
        Constraint::ALL
            .into_iter()
            .find(|c| c.as_str() == name)
            .ok_or_else(|| PolicyError::UnknownConstraint {
                name: s.trim().to_owned(),
            })
    }
}

impl TryFrom<String> for Constraint {
    type Error = PolicyError;

    fn try_from(s: String) -> Result<Constraint, PolicyError> {
        s.parse()
    }
}

impl From<Constraint> for String {
    fn from(c: Constraint) -> String {
        c.as_str().to_owned()
    }
}

/// When a policy is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// At creation of the element.
    Create,
    /// At composition, when a capability is joined to a container.
    Join,
    /// At use (bind, power-on, a single operation).
    Use,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Create => "create",
            Scope::Join => "join",
            Scope::Use => "use",
        })
    }
}

/// What a policy is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Container,
    Volume,
    Network,
    Image,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Container => "container",
            Target::Volume => "volume",
            Target::Network => "network",
            Target::Image => "image",
        })
    }
}

/// Why a policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "Unknown constraint {name:?}; known: read-only, allowed, denied, affinity, anti-affinity"
    )]
    UnknownConstraint { name: String },
    #[error(
        "Policy {text:?} has no ':'; expected constraint:filter, e.g. anti-affinity:label.tier=db"
    )]
    MissingSeparator { text: String },
    #[error("Invalid policy filter")]
    Filter(#[from] FilterError),
    #[error("Constraint {constraint} cannot be satisfied on a {target} at {scope}: {reason}")]
    Unsatisfiable {
        constraint: Constraint,
        target: Target,
        scope: Scope,
        reason: String,
    },
    #[error("No peer matches affinity filter {filter:?}")]
    AffinityUnmet { filter: String },
    #[error("Peer {peer} matches anti-affinity filter {filter:?}")]
    AntiAffinityConflict { filter: String, peer: String },
}

/// A filterspec paired with a constraint.
///
/// JSON: `{"filter": "label.tier=db", "constraint": "anti-affinity"}` (a
/// missing filter is the empty one: all elements). Compact string form:
/// `anti-affinity:label.tier=db`, `read-only:` for all.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub filter: Filter,
    pub constraint: Constraint,
}

impl Policy {
    pub fn new(constraint: Constraint, filter: Filter) -> Policy {
        Policy { filter, constraint }
    }

    /// Refuses a policy that cannot be satisfied where it is given; see
    /// [`Constraint::scopes`] for the table of what is valid where.
    pub fn validate(&self, scope: Scope, target: Target) -> Result<(), PolicyError> {
        if self.constraint.scopes(target).contains(&scope) {
            return Ok(());
        }
        Err(PolicyError::Unsatisfiable {
            constraint: self.constraint,
            target,
            scope,
            reason: self.constraint.applies_to().to_owned(),
        })
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.constraint, self.filter)
    }
}

impl FromStr for Policy {
    type Err = PolicyError;

    /// `constraint:filter`; the filter may itself contain ':'.
    fn from_str(s: &str) -> Result<Policy, PolicyError> {
        let (constraint, filter) = s
            .split_once(':')
            .ok_or_else(|| PolicyError::MissingSeparator { text: s.to_owned() })?;
        Ok(Policy {
            constraint: constraint.parse()?,
            filter: Filter::parse(filter)?,
        })
    }
}

/// Checks the placement policies (affinity, anti-affinity) against the
/// peers a new container would share a host with; other constraints are
/// not about placement and are skipped.
///
/// With the local single-host backend every running container is a peer.
/// `candidate_peers` must not include the container being placed.
/// Affinity needs at least one matching peer (so it fails when there are
/// none); anti-affinity fails on the first matching peer, named by its
/// `id` field.
pub fn check_placement(
    policies: &[Policy],
    candidate_peers: &[&dyn Filterable],
) -> Result<(), PolicyError> {
    for policy in policies {
        match policy.constraint {
            Constraint::Affinity => {
                if !candidate_peers.iter().any(|p| policy.filter.matches(*p)) {
                    return Err(PolicyError::AffinityUnmet {
                        filter: policy.filter.to_string(),
                    });
                }
            }
            Constraint::AntiAffinity => {
                if let Some(peer) = candidate_peers.iter().find(|p| policy.filter.matches(**p)) {
                    return Err(PolicyError::AntiAffinityConflict {
                        filter: policy.filter.to_string(),
                        peer: peer.field("id").unwrap_or_else(|| "<no id>".to_owned()),
                    });
                }
            }
            Constraint::ReadOnly | Constraint::Allowed | Constraint::Denied => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Peer {
        id: &'static str,
        tier: &'static str,
    }

    impl Filterable for Peer {
        fn field(&self, name: &str) -> Option<String> {
            (name == "id").then(|| self.id.to_owned())
        }

        fn label(&self, key: &str) -> Option<&str> {
            (key == "tier").then_some(self.tier)
        }
    }

    fn policy(s: &str) -> Policy {
        s.parse().expect(s)
    }

    #[test]
    fn constraint_names() {
        for c in Constraint::ALL {
            assert_eq!(c.as_str().parse::<Constraint>(), Ok(c));
            assert_eq!(c.to_string().to_uppercase().parse::<Constraint>(), Ok(c));
        }
        assert_eq!("readonly".parse(), Ok(Constraint::ReadOnly));
        assert_eq!("ReadOnly".parse(), Ok(Constraint::ReadOnly));
        assert_eq!(" Anti-Affinity ".parse(), Ok(Constraint::AntiAffinity));
        let e = "exclusive".parse::<Constraint>().expect_err("unknown");
        assert_eq!(
            e,
            PolicyError::UnknownConstraint {
                name: "exclusive".into()
            }
        );
        assert_eq!(
            e.to_string(),
            r#"Unknown constraint "exclusive"; known: read-only, allowed, denied, affinity, anti-affinity"#
        );
        assert!("antiaffinity".parse::<Constraint>().is_err());
    }

    #[test]
    fn compact_form() {
        let p = policy("anti-affinity:label.tier=db");
        assert_eq!(p.constraint, Constraint::AntiAffinity);
        assert_eq!(p.filter, Filter::parse("label.tier=db").expect("parse"));
        assert_eq!(p.to_string(), "anti-affinity:label.tier=db");

        let p = policy("read-only:");
        assert_eq!(p.constraint, Constraint::ReadOnly);
        assert!(p.filter.is_empty());
        assert_eq!(p.to_string(), "read-only:");

        // The filter keeps its own ':' characters.
        let p = policy("READONLY:image=busybox:latest");
        assert_eq!(p.constraint, Constraint::ReadOnly);
        assert_eq!(p.to_string(), "read-only:image=busybox:latest");
        assert_eq!(policy(&p.to_string()), p);

        assert_eq!(
            "read-only".parse::<Policy>(),
            Err(PolicyError::MissingSeparator {
                text: "read-only".into()
            })
        );
        assert!(matches!(
            "sticky:label.a".parse::<Policy>(),
            Err(PolicyError::UnknownConstraint { .. })
        ));
        let e = "denied:!a=b".parse::<Policy>().expect_err("bad filter");
        assert!(matches!(
            e,
            PolicyError::Filter(FilterError::NegatedComparison { .. })
        ));
        let source = std::error::Error::source(&e).expect("source").to_string();
        assert!(source.contains("Term 1"), "{source}");
    }

    #[test]
    fn json_form() {
        let p = policy("anti-affinity:label.tier=db");
        let json = serde_json::to_string(&p).expect("serialize");
        assert_eq!(
            json,
            r#"{"filter":"label.tier=db","constraint":"anti-affinity"}"#
        );
        let back: Policy = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, p);

        let p: Policy = serde_json::from_str(r#"{"constraint":"ReadOnly"}"#).expect("no filter");
        assert_eq!(p, Policy::new(Constraint::ReadOnly, Filter::default()));

        for bad in [
            r#"{"filter":"a","constraint":"sticky"}"#,
            r#"{"filter":"!a=b","constraint":"denied"}"#,
            r#"{"filter":"a","constraint":"denied","extra":1}"#,
            r#"{"filter":"a"}"#,
        ] {
            assert!(serde_json::from_str::<Policy>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_matrix() {
        use Constraint::*;
        use Scope::*;
        use Target::*;
        // Every (constraint, target, scope) that is valid; everything else is not.
        let valid = [
            (ReadOnly, Container, Create),
            (ReadOnly, Volume, Join),
            (ReadOnly, Volume, Use),
            (ReadOnly, Image, Join),
            (ReadOnly, Image, Use),
            (Allowed, Container, Create),
            (Allowed, Network, Join),
            (Allowed, Network, Use),
            (Denied, Container, Create),
            (Denied, Network, Join),
            (Denied, Network, Use),
            (Affinity, Container, Create),
            (AntiAffinity, Container, Create),
        ];
        let mut checked = 0;
        for c in Constraint::ALL {
            for t in [Container, Volume, Network, Image] {
                for s in [Create, Join, Use] {
                    let result = Policy::new(c, Filter::default()).validate(s, t);
                    if valid.contains(&(c, t, s)) {
                        assert_eq!(result, Ok(()), "{c} on {t} at {s}");
                    } else {
                        match result {
                            Err(PolicyError::Unsatisfiable {
                                constraint,
                                target,
                                scope,
                                reason,
                            }) => {
                                assert_eq!((constraint, target, scope), (c, t, s));
                                assert!(!reason.is_empty());
                            }
                            other => panic!("{c} on {t} at {s}: {other:?}"),
                        }
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 60);
    }

    #[test]
    fn unsatisfiable_message() {
        let e = policy("affinity:label.tier=db")
            .validate(Scope::Join, Target::Volume)
            .expect_err("placement on a volume");
        assert_eq!(
            e.to_string(),
            "Constraint affinity cannot be satisfied on a volume at join: \
             placement constraints apply only to a container at create"
        );
    }

    #[test]
    fn placement() {
        let db1 = Peer {
            id: "db1",
            tier: "db",
        };
        let web1 = Peer {
            id: "web1",
            tier: "web",
        };
        let peers: [&dyn Filterable; 2] = [&web1, &db1];

        let anti = policy("anti-affinity:label.tier=db");
        assert_eq!(
            check_placement(std::slice::from_ref(&anti), &peers),
            Err(PolicyError::AntiAffinityConflict {
                filter: "label.tier=db".into(),
                peer: "db1".into(),
            })
        );
        let e = check_placement(std::slice::from_ref(&anti), &peers).expect_err("conflict");
        assert_eq!(
            e.to_string(),
            r#"Peer db1 matches anti-affinity filter "label.tier=db""#
        );
        assert_eq!(
            check_placement(std::slice::from_ref(&anti), &[&web1]),
            Ok(())
        );
        assert_eq!(check_placement(std::slice::from_ref(&anti), &[]), Ok(()));

        let near = policy("affinity:label.tier=db");
        assert_eq!(check_placement(std::slice::from_ref(&near), &peers), Ok(()));
        assert_eq!(
            check_placement(std::slice::from_ref(&near), &[&web1]),
            Err(PolicyError::AffinityUnmet {
                filter: "label.tier=db".into()
            })
        );
        assert!(check_placement(std::slice::from_ref(&near), &[]).is_err());

        // Several policies: all must hold; non-placement ones are skipped.
        let both = [
            near.clone(),
            policy("anti-affinity:label.tier=cache"),
            policy("denied:label.tier=db"),
        ];
        assert_eq!(check_placement(&both, &peers), Ok(()));
        let clash = [near, policy("anti-affinity:id=web*")];
        assert!(matches!(
            check_placement(&clash, &peers),
            Err(PolicyError::AntiAffinityConflict { peer, .. }) if peer == "web1"
        ));
        assert_eq!(check_placement(&[], &peers), Ok(()));
    }
}
