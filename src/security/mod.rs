//! Users, roles and permissions: Druid's basic-security model, kept in the replicated state
//! instead of Druid's metadata store, so every node checks requests against the same data with
//! no polling.
//!
//! - The **authenticator** holds users and their credentials: a salted PBKDF2-HMAC-SHA512 hash
//!   (Druid's algorithm and default of 10,000 iterations), never the password.
//! - The **authorizer** holds users, roles, the roles each user has, and each role's
//!   permissions: a resource (`type`, and `name`, a regular expression that must match the whole
//!   resource name) and an action (`READ` or `WRITE`). A user may do what any of its roles
//!   permits.
//!
//! As in Druid, a user is created in each separately. [`SecurityCommand::InitAdmin`] creates
//! the `admin` user with every permission at the first start of a cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::sync::Mutex;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Druid's default `credentialIterations`.
pub const DEFAULT_ITERATIONS: u32 = 10_000;

/// Most iterations accepted in stored credentials, which bounds the cost of one check.
pub const MAX_ITERATIONS: u32 = 1_000_000;

/// The user made at the first start, with every permission.
pub const ADMIN: &str = "admin";

/// Resource types Druid defines; the admin role gets both actions on each.
pub const RESOURCE_TYPES: [&str; 7] = [
    "DATASOURCE",
    "VIEW",
    "CONFIG",
    "STATE",
    "SYSTEM_TABLE",
    "QUERY_CONTEXT",
    "EXTERNAL",
];

/// Longest user, role or resource name accepted.
pub const MAX_NAME_LEN: usize = 1024;

const SALT_LEN: usize = 32;
const HASH_LEN: usize = 64;

/// `READ` or `WRITE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    Read,
    Write,
}

/// What a permission is about: a resource `type` (`DATASOURCE`, `STATE`, `CONFIG`, ...) and a
/// `name` pattern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// One permission of a role, in Druid's JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub resource: Resource,
    pub action: Action,
}

/// A password's salted hash, in Druid's JSON (`salt` and `hash` in base64).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    #[serde(serialize_with = "to_base64", deserialize_with = "from_base64")]
    pub salt: Vec<u8>,
    #[serde(serialize_with = "to_base64", deserialize_with = "from_base64")]
    pub hash: Vec<u8>,
    pub iterations: u32,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

fn to_base64<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn from_base64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(d)?;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(serde::de::Error::custom)
}

impl Credentials {
    /// Hashes `password` under a new random salt.
    pub fn new(password: &str) -> Credentials {
        let salt: [u8; SALT_LEN] = rand::random();
        Credentials::with_salt(password, salt.to_vec(), DEFAULT_ITERATIONS)
    }

    fn with_salt(password: &str, salt: Vec<u8>, iterations: u32) -> Credentials {
        let mut hash = vec![0u8; HASH_LEN];
        let rounds = NonZeroU32::new(iterations.max(1)).expect("at least one iteration");
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA512,
            rounds,
            &salt,
            password.as_bytes(),
            &mut hash,
        );
        Credentials { salt, hash, iterations }
    }

    /// Whether `password` is the one these credentials were made from (constant time).
    pub fn verify(&self, password: &str) -> bool {
        let Some(rounds) = NonZeroU32::new(self.iterations) else {
            return false;
        };
        ring::pbkdf2::verify(
            ring::pbkdf2::PBKDF2_HMAC_SHA512,
            rounds,
            &self.salt,
            password.as_bytes(),
            &self.hash,
        )
        .is_ok()
    }

    /// The rules stored credentials meet (checked before they enter the log).
    pub fn check(&self) -> Result<(), String> {
        if !(1..=MAX_ITERATIONS).contains(&self.iterations) {
            return Err(format!("iterations must be 1 to {MAX_ITERATIONS}"));
        }
        if self.salt.len() > 1024 || self.hash.len() > 1024 || self.hash.is_empty() {
            return Err("the salt and hash must be 1 to 1024 bytes".into());
        }
        Ok(())
    }
}

/// A user of the authorizer and its roles (Druid's `BasicAuthorizerUser`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthzUser {
    pub roles: BTreeSet<String>,
}

/// Everything the authenticator and the authorizer keep.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SecurityState {
    /// The authenticator's users; a user without credentials cannot log in yet.
    #[serde(default)]
    pub users: BTreeMap<String, Option<Credentials>>,
    #[serde(default)]
    pub authz_users: BTreeMap<String, AuthzUser>,
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<Permission>>,
}

/// One change to users, roles or permissions. Each is refused, changing nothing, with Druid's
/// message when what it names does not exist (or already exists).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SecurityCommand {
    CreateUser {
        name: String,
    },
    DeleteUser {
        name: String,
    },
    SetCredentials {
        name: String,
        credentials: Credentials,
    },
    CreateAuthzUser {
        name: String,
    },
    DeleteAuthzUser {
        name: String,
    },
    CreateRole {
        name: String,
    },
    DeleteRole {
        name: String,
    },
    AssignRole {
        user: String,
        role: String,
    },
    UnassignRole {
        user: String,
        role: String,
    },
    SetPermissions {
        role: String,
        permissions: Vec<Permission>,
    },
    /// At a cluster's first start: the `admin` user with `credentials`, and the `admin` role
    /// with both actions on every resource type. Does nothing when `admin` exists.
    InitAdmin {
        credentials: Credentials,
    },
}

/// The admin role's permissions: both actions on every resource of every type.
pub fn admin_permissions() -> Vec<Permission> {
    RESOURCE_TYPES
        .iter()
        .flat_map(|t| {
            [Action::Read, Action::Write].map(|action| Permission {
                resource: Resource {
                    name: ".*".into(),
                    kind: (*t).into(),
                },
                action,
            })
        })
        .collect()
}

fn user_missing(name: &str) -> String {
    format!("User [{name}] does not exist.")
}

fn role_missing(name: &str) -> String {
    format!("Role [{name}] does not exist.")
}

impl SecurityState {
    /// Applies `command`; an error leaves the state as it was.
    pub fn apply(&mut self, command: SecurityCommand) -> Result<(), String> {
        use SecurityCommand as C;
        match command {
            C::CreateUser { name } => {
                if self.users.contains_key(&name) {
                    return Err(format!("User [{name}] already exists."));
                }
                self.users.insert(name, None);
            }
            C::DeleteUser { name } => {
                self.users.remove(&name).ok_or_else(|| user_missing(&name))?;
            }
            C::SetCredentials { name, credentials } => {
                let slot = self.users.get_mut(&name).ok_or_else(|| user_missing(&name))?;
                *slot = Some(credentials);
            }
            C::CreateAuthzUser { name } => {
                if self.authz_users.contains_key(&name) {
                    return Err(format!("User [{name}] already exists."));
                }
                self.authz_users.insert(name, AuthzUser::default());
            }
            C::DeleteAuthzUser { name } => {
                self.authz_users.remove(&name).ok_or_else(|| user_missing(&name))?;
            }
            C::CreateRole { name } => {
                if self.roles.contains_key(&name) {
                    return Err(format!("Role [{name}] already exists."));
                }
                self.roles.insert(name, Vec::new());
            }
            C::DeleteRole { name } => {
                self.roles.remove(&name).ok_or_else(|| role_missing(&name))?;
                for user in self.authz_users.values_mut() {
                    user.roles.remove(&name);
                }
            }
            C::AssignRole { user, role } => {
                if !self.roles.contains_key(&role) {
                    return Err(role_missing(&role));
                }
                let u = self.authz_users.get_mut(&user).ok_or_else(|| user_missing(&user))?;
                if !u.roles.insert(role.clone()) {
                    return Err(format!("User [{user}] already has role [{role}]."));
                }
            }
            C::UnassignRole { user, role } => {
                if !self.roles.contains_key(&role) {
                    return Err(role_missing(&role));
                }
                let u = self.authz_users.get_mut(&user).ok_or_else(|| user_missing(&user))?;
                if !u.roles.remove(&role) {
                    return Err(format!("User [{user}] does not have role [{role}]."));
                }
            }
            C::SetPermissions { role, permissions } => {
                let slot = self.roles.get_mut(&role).ok_or_else(|| role_missing(&role))?;
                *slot = permissions;
            }
            C::InitAdmin { credentials } => {
                if self.users.contains_key(ADMIN) {
                    return Ok(());
                }
                self.users.insert(ADMIN.into(), Some(credentials));
                self.roles.insert(ADMIN.into(), admin_permissions());
                let admin = self.authz_users.entry(ADMIN.into()).or_default();
                admin.roles.insert(ADMIN.into());
            }
        }
        Ok(())
    }

    /// Whether `user` may do `action` on the resource `kind`/`name`.
    pub fn allows(&self, user: &str, kind: &str, name: &str, action: Action) -> bool {
        let Some(u) = self.authz_users.get(user) else {
            return false;
        };
        u.roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flatten()
            .any(|p| p.action == action && p.resource.kind == kind && name_matches(&p.resource.name, name))
    }
}

/// Compiled name patterns, shared by every request.
static PATTERNS: Mutex<Option<HashMap<String, Option<regex::Regex>>>> = Mutex::new(None);

/// Most patterns kept compiled; the cache starts over beyond.
const MAX_PATTERNS: usize = 4096;

fn compile(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

/// Whether the permission name `pattern` (a regular expression) matches all of `name`, as
/// Druid's `Pattern.matcher(name).matches()`.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    if pattern == ".*" {
        return true;
    }
    // A name without regular-expression syntax matches only itself.
    if !pattern.contains(|c: char| "\\.+*?()|[]{}^$".contains(c)) {
        return pattern == name;
    }
    let mut guard = PATTERNS.lock().unwrap_or_else(|p| p.into_inner());
    let cache = guard.get_or_insert_with(HashMap::new);
    if let Some(compiled) = cache.get(pattern) {
        return compiled.as_ref().is_some_and(|re| re.is_match(name));
    }
    if cache.len() >= MAX_PATTERNS {
        cache.clear();
    }
    let compiled = compile(pattern).ok();
    let matched = compiled.as_ref().is_some_and(|re| re.is_match(name));
    cache.insert(pattern.to_string(), compiled);
    matched
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("a {what} name must be 1 to {MAX_NAME_LEN} bytes"));
    }
    Ok(())
}

/// Checks permissions before they are stored: each name must be a valid regular expression.
pub fn check_permissions(permissions: &[Permission]) -> Result<(), String> {
    for p in permissions {
        check_name("resource", &p.resource.name)?;
        check_name("resource type", &p.resource.kind)?;
        compile(&p.resource.name).map_err(|e| {
            format!(
                "the resource name [{}] is not a valid regular expression: {e}",
                p.resource.name
            )
        })?;
    }
    Ok(())
}

/// The rules a [`SecurityCommand`] meets before it is proposed.
pub fn validate(command: &SecurityCommand) -> Result<(), String> {
    use SecurityCommand as C;
    match command {
        C::CreateUser { name } | C::DeleteUser { name } | C::CreateAuthzUser { name } | C::DeleteAuthzUser { name } => {
            check_name("user", name)
        }
        C::CreateRole { name } | C::DeleteRole { name } => check_name("role", name),
        C::AssignRole { user, role } | C::UnassignRole { user, role } => {
            check_name("user", user)?;
            check_name("role", role)
        }
        C::SetCredentials { name, credentials } => {
            check_name("user", name)?;
            credentials.check()
        }
        C::SetPermissions { role, permissions } => {
            check_name("role", role)?;
            check_permissions(permissions)
        }
        C::InitAdmin { credentials } => credentials.check(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_verify_their_password_only_and_never_hold_it() {
        let c = Credentials::new("correct horse");
        assert!(c.verify("correct horse"));
        assert!(!c.verify("correct horse "));
        assert!(!c.verify(""));
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("correct"), "{json}");
        let back: Credentials = serde_json::from_str(&json).unwrap();
        assert!(back.verify("correct horse"));
        assert_eq!(back.iterations, DEFAULT_ITERATIONS);
        // Two users with one password get different hashes.
        assert_ne!(Credentials::new("correct horse").hash, c.hash);
    }

    #[test]
    fn roles_grant_what_their_patterns_match_in_full() {
        let mut s = SecurityState::default();
        let run = |s: &mut SecurityState, c| s.apply(c).unwrap();
        run(&mut s, SecurityCommand::CreateAuthzUser { name: "ana".into() });
        run(&mut s, SecurityCommand::CreateRole { name: "wiki".into() });
        run(
            &mut s,
            SecurityCommand::AssignRole {
                user: "ana".into(),
                role: "wiki".into(),
            },
        );
        let perm = |name: &str, kind: &str, action| Permission {
            resource: Resource {
                name: name.into(),
                kind: kind.into(),
            },
            action,
        };
        run(
            &mut s,
            SecurityCommand::SetPermissions {
                role: "wiki".into(),
                permissions: vec![
                    perm("wiki.*", "DATASOURCE", Action::Write),
                    perm(".*", "STATE", Action::Read),
                ],
            },
        );
        assert!(s.allows("ana", "DATASOURCE", "wikipedia", Action::Write));
        assert!(!s.allows("ana", "DATASOURCE", "wikipedia", Action::Read));
        assert!(
            !s.allows("ana", "DATASOURCE", "my-wiki", Action::Write),
            "the pattern must match in full"
        );
        assert!(s.allows("ana", "STATE", "STATE", Action::Read));
        assert!(!s.allows("bob", "STATE", "STATE", Action::Read));
        // Deleting the role takes it from its users.
        run(&mut s, SecurityCommand::DeleteRole { name: "wiki".into() });
        assert!(!s.allows("ana", "STATE", "STATE", Action::Read));
        assert!(s.authz_users["ana"].roles.is_empty());
    }

    #[test]
    fn refused_commands_change_nothing_and_say_why() {
        let mut s = SecurityState::default();
        s.apply(SecurityCommand::InitAdmin {
            credentials: Credentials::new("pw"),
        })
        .unwrap();
        let before = s.clone();
        let cases = [
            (
                SecurityCommand::CreateUser { name: "admin".into() },
                "User [admin] already exists.",
            ),
            (
                SecurityCommand::DeleteUser { name: "nobody".into() },
                "User [nobody] does not exist.",
            ),
            (
                SecurityCommand::CreateRole { name: "admin".into() },
                "Role [admin] already exists.",
            ),
            (
                SecurityCommand::AssignRole {
                    user: "admin".into(),
                    role: "admin".into(),
                },
                "User [admin] already has role [admin].",
            ),
            (
                SecurityCommand::AssignRole {
                    user: "admin".into(),
                    role: "nope".into(),
                },
                "Role [nope] does not exist.",
            ),
            (
                SecurityCommand::SetPermissions {
                    role: "nope".into(),
                    permissions: vec![],
                },
                "Role [nope] does not exist.",
            ),
        ];
        for (command, message) in cases {
            assert_eq!(s.apply(command), Err(message.to_string()));
            assert_eq!(s, before);
        }
        // A second start keeps the admin's password as it is.
        s.apply(SecurityCommand::InitAdmin {
            credentials: Credentials::new("other"),
        })
        .unwrap();
        assert_eq!(s, before);
        assert!(s.allows(ADMIN, "CONFIG", "security", Action::Write));
    }

    #[test]
    fn a_pattern_that_is_not_a_regular_expression_is_refused_before_the_log() {
        let bad = Permission {
            resource: Resource {
                name: "wiki(".into(),
                kind: "DATASOURCE".into(),
            },
            action: Action::Read,
        };
        let e = validate(&SecurityCommand::SetPermissions {
            role: "r".into(),
            permissions: vec![bad],
        })
        .unwrap_err();
        assert!(e.contains("wiki("), "{e}");
        assert!(!name_matches("wiki(", "wiki("), "an invalid pattern matches nothing");
    }
}
