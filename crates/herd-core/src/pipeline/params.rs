//! `params:` of a herd.yml: inputs a build started by hand may set
//! (`herd build start P --param KEY=VALUE`), with defaults and choices;
//! every step sees them as `HERD_PARAM_KEY`.
//!
//! ```yaml
//! params:
//!   python: {default: "3.12", choices: ["3.12", "3.13"], description: the interpreter}
//!   deploy: {default: "no"}
//! ```

use super::Lower;
use crate::config_error::ConfigError;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

/// Most parameters one herd.yml may declare, and the longest value.
pub const MAX_PARAMS: usize = 50;
pub const MAX_PARAM_VALUE: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Param {
    pub name: String,
    /// The value of a build that does not set it (a change's build).
    pub default: String,
    /// The only values allowed (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawParam {
    default: Option<String>,
    #[serde(default)]
    choices: Vec<String>,
    description: Option<String>,
}

/// The environment variable a step reads a parameter from.
pub fn env_name(param: &str) -> String {
    format!("HERD_PARAM_{}", param.to_ascii_uppercase())
}

fn is_param_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 50
        && n.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The value of every parameter for a build that sets `given`: each
/// given one checked (declared, one of its choices), the rest defaulted.
pub fn resolve(
    params: &[Param],
    given: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    for (k, v) in given {
        let Some(p) = params.iter().find(|p| p.name == *k) else {
            let declared: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
            return Err(if declared.is_empty() {
                format!("unknown parameter `{k}`: herd.yml declares no `params:`")
            } else {
                format!(
                    "unknown parameter `{k}`; herd.yml declares: {}",
                    declared.join(", ")
                )
            });
        };
        if !p.choices.is_empty() && !p.choices.contains(v) {
            return Err(format!(
                "parameter `{k}` cannot be `{v}`: one of {}",
                p.choices.join(", ")
            ));
        }
        if v.len() > MAX_PARAM_VALUE || v.contains('\0') {
            return Err(format!(
                "parameter `{k}`: a value is at most {MAX_PARAM_VALUE} bytes, without NUL"
            ));
        }
    }
    Ok(params
        .iter()
        .map(|p| {
            let v = given
                .get(&p.name)
                .cloned()
                .unwrap_or_else(|| p.default.clone());
            (p.name.clone(), v)
        })
        .collect())
}

impl Lower<'_> {
    pub(super) fn params(
        &self,
        raw: IndexMap<Spanned<String>, Spanned<RawParam>>,
    ) -> Result<Vec<Param>, ConfigError> {
        if raw.len() > MAX_PARAMS {
            return Err(ConfigError::at(
                self.file,
                self.text,
                1,
                1,
                format!("at most {MAX_PARAMS} `params:`"),
            ));
        }
        let mut out = Vec::new();
        for (name, p) in raw {
            if !is_param_name(&name.value) {
                return Err(self
                    .err(&name.referenced, format!("invalid parameter name `{}`", name.value))
                    .with_help("a parameter name uses letters, digits and `_` (it becomes HERD_PARAM_NAME)"));
            }
            let p_at = p.referenced;
            let p = p.value;
            let default = match (p.default, p.choices.first()) {
                (Some(d), _) => d,
                (None, Some(first)) => first.clone(),
                (None, None) => String::new(),
            };
            if !p.choices.is_empty() && !p.choices.contains(&default) {
                return Err(self
                    .err(
                        &p_at,
                        format!("the default of `{}` is not one of its choices", name.value),
                    )
                    .with_help("make `default:` one of `choices:`"));
            }
            out.push(Param {
                name: name.value,
                default,
                choices: p.choices,
                description: p.description,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_values_are_checked_and_the_rest_defaulted() {
        let params = vec![
            Param {
                name: "python".into(),
                default: "3.12".into(),
                choices: vec!["3.12".into(), "3.13".into()],
                description: None,
            },
            Param {
                name: "note".into(),
                default: String::new(),
                choices: vec![],
                description: None,
            },
        ];
        let given = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let all = resolve(&params, &given(&[("python", "3.13")])).unwrap();
        assert_eq!(all["python"], "3.13");
        assert_eq!(all["note"], "");
        assert!(resolve(&params, &given(&[("python", "2.7")]))
            .unwrap_err()
            .contains("one of 3.12, 3.13"));
        assert!(resolve(&params, &given(&[("pyhton", "3.12")]))
            .unwrap_err()
            .contains("declares: python, note"));
        assert_eq!(env_name("python"), "HERD_PARAM_PYTHON");
    }
}
