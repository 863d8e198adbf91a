//! Coded concepts for the SR: the fixed DICOM/LOINC/SNOMED concepts of the
//! templates, and the site-editable tables of `config/codes.toml`
//! (conditions, levels, severity, laterality; all marked unverified there).

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Code {
    pub value: String,
    pub scheme: String,
    pub meaning: String,
}

pub fn code(value: &str, scheme: &str, meaning: &str) -> Code {
    Code {
        value: value.into(),
        scheme: scheme.into(),
        meaning: meaning.into(),
    }
}

/// Local coding scheme for concepts without a standard code found.
pub const LOCAL_SCHEME: &str = "99SPINEAGENT";

/// Code Value is VR SH: at most 16 characters.
fn short_value(v: &str) -> String {
    v.chars().take(16).collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Codes {
    conditions: BTreeMap<String, Code>,
    levels: BTreeMap<String, Code>,
    severity: BTreeMap<String, Code>,
    laterality: BTreeMap<String, Code>,
}

pub const BUILTIN_CODES: &str = include_str!("../../../config/codes.toml");

impl Codes {
    pub fn builtin() -> Codes {
        Codes::from_toml(BUILTIN_CODES).expect("the built-in code tables parse")
    }

    pub fn from_toml(text: &str) -> Result<Codes, toml::de::Error> {
        toml::from_str(text)
    }

    pub fn condition(&self, name: &str) -> Code {
        self.conditions
            .get(name)
            .cloned()
            .unwrap_or_else(|| code(&short_value(&name.to_uppercase()), LOCAL_SCHEME, name))
    }

    pub fn level(&self, name: &str) -> Code {
        self.levels.get(name).cloned().unwrap_or_else(|| {
            let kind = if name.contains('-') { "DISC" } else { "VERTEBRA" };
            let meaning = if name.contains('-') {
                format!("{} intervertebral disc", name.replace('-', "/"))
            } else {
                format!("{name} vertebra")
            };
            code(
                &short_value(&format!("{kind}_{}", name.replace('-', "_"))),
                LOCAL_SCHEME,
                &meaning,
            )
        })
    }

    pub fn severity(&self, name: &str) -> Option<Code> {
        self.severity.get(name).cloned()
    }

    pub fn laterality(&self, name: &str) -> Option<Code> {
        self.laterality.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_cover_every_disc_and_fall_back_to_local_codes() {
        let c = Codes::builtin();
        assert_eq!(c.level("L4-L5").value, "84020006");
        assert_eq!(c.level("C3").scheme, LOCAL_SCHEME);
        assert_eq!(c.condition("herniation").value, "73589001");
        assert!(c.laterality("both_or_central").is_none());
        assert_eq!(c.severity("severe").unwrap().value, "24484000");
        for name in [
            "C3",
            "T7",
            "pars_defect",
            "lipomatosis",
            "subarticular_stenosis",
            "a_very_long_unknown_name",
        ] {
            assert!(c.level(name).value.len() <= 16 && c.condition(name).value.len() <= 16);
        }
    }
}
