//! The speakers' gossip Secret: where it is and what it holds. The controller creates it at
//! run time (never re-rolling a key it finds); the speakers watch it.

/// Field that signs the speakers' heartbeats (and is accepted).
pub const KEY_FIELD: &str = "key";
/// Field accepted as well during a key rotation (docs/install.md, rotating the gossip key), never used to sign.
pub const ACCEPTED_KEY_FIELD: &str = "acceptedKey";

/// A Secret named `name` in `namespace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

impl SecretRef {
    /// `NAME` (in `default_namespace`) or `NAMESPACE/NAME`.
    pub fn parse(text: &str, default_namespace: &str) -> Self {
        match text.split_once('/') {
            Some((namespace, name)) => Self {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
            None => Self {
                namespace: default_namespace.to_owned(),
                name: text.to_owned(),
            },
        }
    }
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_named_alone_or_with_its_namespace() {
        assert_eq!(
            SecretRef::parse("herald-gossip", "herald-system").to_string(),
            "herald-system/herald-gossip"
        );
        assert_eq!(
            SecretRef::parse("other/mine", "herald-system"),
            SecretRef {
                namespace: "other".into(),
                name: "mine".into()
            }
        );
    }
}
