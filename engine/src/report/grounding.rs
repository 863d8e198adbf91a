//! Grounded decoding: the verifier's reading of a report, applied clause by
//! clause while the language model writes, so that a draft is steered away
//! from a finding the agents did not report before it is finished rather
//! than rejected after. [`Grounding`] is the [`Guide`] the report agent
//! gives the model; the finished draft still goes through `verify`.
//!
//! What it refuses, and which token it takes back:
//! - a finding at a level where the agents did not report it: the first
//!   character of the level that no level of that condition has ("L3-4"
//!   where the agents have L4-L5: the "3"), or the condition's words when
//!   the agents report that condition nowhere;
//! - a side or severity other than the agents': that word; a graded
//!   finding without its grade: the clause's first word;
//! - a condition the agents report nowhere, named without a level the
//!   check can read ("... of the LN2-3 disc"): its words;
//! - a section heading written twice, or a FINDINGS heading after the
//!   IMPRESSION: the heading;
//! - after the IMPRESSION heading, a line that does not open a numbered
//!   item, or an item that states no finding the impression has not listed
//!   yet: its first character; a new item once every finding is listed:
//!   its number;
//! - a clause that denies a finding the agents reported ("no foraminal
//!   narrowing at any level"): its negation;
//! - an end of text with a finding still missing or a section not written:
//!   the end token (the model must go on).
//!
//! Levels are also restricted as they are written: once the text ends in
//! a level being spelled ("at L4-"), the next token must keep it on the way
//! to a level the agents report for the clause's condition (any level the
//! study shows when the clause names none, or negates), so that taking a
//! wrong digit back does not just lead to "L 3-4".
//!
//! Clauses are checked when they end, and before that as soon as a
//! finding's level is complete, so that less text is taken back.

use crate::analysis::Finding;
use crate::lm::{Guide, Verdict};

use super::compose::short_level;
use super::verify::{
    CLAUSE_ENDS, Discrepancy, Fault, Spans, Stated, conditions_named, contradicting_denials, faults, negated,
    stated_findings, stated_in_clause, unplaced_unsupported, verify,
};

/// Headings of the report template (both regions), as the model writes them.
const HEADINGS: &[&str] = &[
    "FINDINGS:",
    "ALIGNMENT:",
    "MARROW:",
    "DISCS:",
    "CORD:",
    "PARAVERTEBRAL SOFT TISSUES:",
    "AXIAL DISCS, DURAL COMPRESSION & FORAMINA:",
    "SPECIFIC LEVELS:",
    "IMPRESSION:",
];

pub struct Grounding<'a> {
    pub findings: &'a [Finding],
    /// Levels the study shows ("L4-L5", "L2").
    pub levels: &'a [String],
}

impl Grounding<'_> {
    /// Byte offset (in `clause`) of what must be taken back, if anything.
    /// `before`: the text ahead of the clause.
    /// `partial`: the clause is still being written (only findings whose
    /// level is complete count).
    fn violation(&self, clause: &str, before: &str, partial: bool) -> Option<usize> {
        if let Some(at) = repeated_heading(clause, before)
            .or_else(|| unnumbered_impression_line(clause, before))
            .or_else(|| self.impression_item(clause, before, partial))
        {
            return Some(at);
        }
        if !partial {
            let denial = contradicting_denials(clause, self.findings).first().map(|(_, at)| *at);
            let unplaced = unplaced_unsupported(clause, self.findings).first().map(|(_, at)| *at);
            if let Some(at) = denial.or(unplaced) {
                return Some(at.min(clause.len()));
            }
        }
        for (stated, spans) in stated_in_clause(clause) {
            if partial && !mention_complete(clause, spans.level.end) {
                continue;
            }
            let at = match faults(&stated, self.findings).first() {
                None => continue,
                Some(Fault::Unsupported) => Some(self.unsupported_at(clause, &stated, &spans)),
                Some(Fault::WrongSide(_)) => spans.side,
                Some(Fault::WrongSeverity(_)) => match spans.severity {
                    Some(at) => Some(at),
                    // A missing grade goes before the condition's words:
                    // write the clause's opening again (once it is whole).
                    None if partial => continue,
                    None => clause.find(|c: char| c.is_ascii_alphabetic()),
                },
            };
            if at.is_some() {
                return at;
            }
        }
        None
    }

    /// Where an unsupported finding goes wrong: the condition's words when
    /// the agents report it nowhere, else the first character of the level
    /// that no level of that condition has.
    fn unsupported_at(&self, clause: &str, stated: &Stated, spans: &Spans) -> usize {
        let forms: Vec<String> = self
            .findings
            .iter()
            .filter(|f| f.condition == stated.condition)
            .flat_map(|f| [f.level.clone(), short_level(&f.level)])
            .collect();
        if forms.is_empty() {
            return spans.condition;
        }
        let mention = &clause[spans.level.start..spans.level.end];
        let agreed = forms.iter().map(|form| common_prefix(mention, form)).max().unwrap_or(0);
        spans.level.start + agreed
    }

    /// The impression lists the agents' findings: an item must state one
    /// the impression has not stated yet, and no item may be opened once
    /// every finding is stated (or, with no findings, after the first).
    fn impression_item(&self, clause: &str, before: &str, partial: bool) -> Option<usize> {
        let impression = &before[before.find("IMPRESSION:")?..];
        let first = clause.find(|c: char| !c.is_whitespace())?;
        let listed = stated_findings(impression);
        let all_listed = self
            .findings
            .iter()
            .all(|f| listed.iter().any(|s| s.condition == f.condition && s.level == f.level));
        let line = before.rsplit('\n').next().unwrap_or("");
        let opens_item = line.trim().is_empty() && clause[first..].starts_with(|c: char| c.is_ascii_digit());
        if opens_item {
            let items_so_far = impression
                .lines()
                .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
                .count();
            let done = if self.findings.is_empty() {
                items_so_far > 0
            } else {
                all_listed
            };
            return done.then_some(first);
        }
        let item_text = line.trim();
        let is_item_body =
            item_text.ends_with('.') && item_text[..item_text.len() - 1].chars().all(|c| c.is_ascii_digit());
        if !is_item_body || item_text.len() < 2 || partial || self.findings.is_empty() {
            return None;
        }
        let new_finding = stated_in_clause(clause)
            .iter()
            .any(|(s, _)| !listed.iter().any(|l| l.condition == s.condition && l.level == s.level));
        (!new_finding).then_some(first)
    }

    /// The spellings of the levels a mention in `clause` may name.
    fn allowed_levels(&self, clause: &str) -> Vec<String> {
        let lower = clause.to_ascii_lowercase();
        let conditions = conditions_named(&lower);
        let levels: Vec<&String> = if conditions.is_empty() || negated(&lower) {
            self.levels
                .iter()
                .chain(self.findings.iter().map(|f| &f.level))
                .collect()
        } else {
            self.findings
                .iter()
                .filter(|f| conditions.contains(&f.condition.as_str()))
                .map(|f| &f.level)
                .collect()
        };
        levels.into_iter().flat_map(|l| [l.clone(), short_level(l)]).collect()
    }
}

/// Characters two level spellings share from the start (case-insensitive).
fn common_prefix(a: &str, b: &str) -> usize {
    a.bytes()
        .zip(b.bytes())
        .take_while(|(x, y)| x.eq_ignore_ascii_case(y))
        .count()
}

/// A heading in `clause` that `before` already has, or a findings-section
/// heading after the impression: its offset in `clause`.
fn repeated_heading(clause: &str, before: &str) -> Option<usize> {
    let impression_written = before.contains("IMPRESSION:");
    HEADINGS
        .iter()
        .filter_map(|h| clause.find(h).map(|at| (*h, at)))
        .filter(|(h, _)| before.contains(h) || impression_written)
        .map(|(_, at)| at)
        .min()
}

/// Whether a level mention ending at `end` is finished: something other
/// than its characters follows it.
fn mention_complete(clause: &str, end: usize) -> bool {
    clause[end..]
        .chars()
        .next()
        .is_some_and(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '/'))
}

/// A line after the IMPRESSION heading that does not open a numbered item
/// ("1. ..."): the offset of its first character.
fn unnumbered_impression_line(clause: &str, before: &str) -> Option<usize> {
    let line_start = before.is_empty() || before.ends_with('\n');
    if !line_start || !before.contains("IMPRESSION:") {
        return None;
    }
    let first = clause.find(|c: char| !c.is_whitespace())?;
    (!clause[first..].starts_with(|c: char| c.is_ascii_digit())).then_some(first)
}

/// A level being spelled at the end of `text`: (its start, what is written
/// so far, e.g. "L4-"). A lone region letter counts ("at L").
fn open_mention(text: &str) -> Option<(usize, &str)> {
    let start = text
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_alphanumeric() || *c == '-' || *c == '/')
        .last()
        .map(|(i, _)| i)?;
    let partial = &text[start..];
    let mut chars = partial.chars();
    if !matches!(chars.next(), Some('C' | 'T' | 'L' | 'S')) {
        return None;
    }
    let rest = chars.as_str();
    let level_like = rest
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '-' | '/' | 'C' | 'T' | 'L' | 'S'))
        && rest.chars().next().is_none_or(|c| c.is_ascii_digit());
    level_like.then_some((start, partial))
}

impl Guide for Grounding<'_> {
    fn check(&self, text: &str, accepted: usize, at_end: bool) -> Verdict {
        let mut start = accepted.min(text.len());
        while let Some(i) = text[start..].find(CLAUSE_ENDS) {
            let end = start + i;
            if let Some(at) = self.violation(&text[start..end], &text[..start], false) {
                return Verdict::Reject(start + at);
            }
            start = end + 1;
        }
        if let Some(at) = self.violation(&text[start..], &text[..start], !at_end) {
            return Verdict::Reject(start + at);
        }
        if !at_end {
            return Verdict::Accept(start);
        }
        let unfinished = verify(text, self.findings)
            .iter()
            .any(|d| matches!(d, Discrepancy::Missing { .. } | Discrepancy::Structure(_)))
            || !text.contains("FINDINGS:")
            || !text.contains("IMPRESSION:");
        if unfinished {
            Verdict::Continue
        } else {
            Verdict::Accept(text.len())
        }
    }

    fn restricts(&self, text: &str) -> bool {
        open_mention(text).is_some()
    }

    fn allows(&self, text: &str, piece: &str) -> bool {
        let Some((start, partial)) = open_mention(text) else {
            return true;
        };
        if partial.len() == 1 {
            // "L" may still become a word ("Left"); after a bare region
            // letter only letters (a word) or digits (a level, checked
            // below) may follow: "L 3", "L-3" would dodge the check.
            let word: String = piece.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
            match piece.chars().next() {
                Some(c) if c.is_ascii_digit() => {}
                Some(c) => return c.is_ascii_alphabetic() && word.chars().all(|c| c.is_ascii_alphabetic()),
                None => return true,
            }
        }
        let clause_start = text[..start].rfind(CLAUSE_ENDS).map_or(0, |i| i + 1);
        let allowed = self.allowed_levels(&text[clause_start..start]);
        let written = format!("{partial}{piece}");
        let mention_len = written
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '/'))
            .unwrap_or(written.len());
        let (mention, ended) = (&written[..mention_len], mention_len < written.len());
        if ended && matches!(mention, "T1" | "T2") && written[mention_len..].starts_with(char::is_whitespace) {
            // "T2 signal": a weighting; the clause check reads it (it
            // tells "T2 signal" from "T2 vertebra").
            return true;
        }
        allowed.iter().any(|form| {
            if ended {
                form.eq_ignore_ascii_case(mention)
            } else {
                form.len() >= mention.len() && form[..mention.len()].eq_ignore_ascii_case(mention)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents() -> Vec<Finding> {
        vec![
            Finding::certain("herniation", "L4-L5", "left", "severe"),
            Finding::certain("hemangioma", "L2", "both_or_central", "moderate"),
        ]
    }

    /// Runs `f` with a guide over `agents()` on a lumbar study.
    fn with_grounding<R>(f: impl FnOnce(&Grounding) -> R) -> R {
        let findings = agents();
        let levels = ["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"].map(String::from);
        f(&Grounding {
            findings: &findings,
            levels: &levels,
        })
    }

    fn check(text: &str, at_end: bool) -> Verdict {
        with_grounding(|g| g.check(text, 0, at_end))
    }

    #[test]
    fn a_wrong_level_is_taken_back_at_its_first_wrong_character() {
        let text = "FINDINGS:\nMARROW: Vertebral hemangioma in L2. Severe left paracentral disc herniation at L3-4.";
        let at = text.find("L3-4").unwrap() + 1;
        assert_eq!(check(text, false), Verdict::Reject(at), "the '3'");
    }

    #[test]
    fn a_condition_the_agents_never_report_is_taken_back_at_its_words() {
        let text = "FINDINGS:\nMARROW: Compression fracture of L1.";
        assert_eq!(check(text, false), Verdict::Reject(text.find("fracture").unwrap()));
    }

    #[test]
    fn wrong_sides_and_severities_are_taken_back_at_the_word() {
        let text = "FINDINGS:\nSevere right paracentral disc herniation at L4-5.";
        assert_eq!(check(text, false), Verdict::Reject(text.find("right").unwrap()));
        let text = "FINDINGS:\nMild left paracentral disc herniation at L4-5.";
        assert_eq!(check(text, false), Verdict::Reject(text.find("Mild").unwrap()));
    }

    #[test]
    fn grounded_clauses_are_settled_and_unfinished_clauses_wait() {
        let text = "FINDINGS:\nSevere left paracentral disc herniation at L4-5. Vertebral hemangioma in L";
        let settled = text.find(" Vertebral").unwrap();
        assert_eq!(check(text, false), Verdict::Accept(settled));
    }

    #[test]
    fn a_finding_is_checked_as_soon_as_its_level_is_complete() {
        let text = "FINDINGS:\nSevere left paracentral disc herniation at L3-4 and";
        assert_eq!(check(text, false), Verdict::Reject(text.find("L3-4").unwrap() + 1));
        let open = "FINDINGS:\nSevere left paracentral disc herniation at L3-4";
        assert!(
            matches!(check(open, false), Verdict::Accept(_)),
            "a level at the very end may still grow: wait for its end"
        );
    }

    fn grounding_allows(text: &str, piece: &str) -> bool {
        with_grounding(|g| {
            assert!(g.restricts(text), "{text}");
            g.allows(text, piece)
        })
    }

    #[test]
    fn levels_are_spelled_only_towards_a_level_the_agents_report() {
        let t = "Severe left paracentral disc herniation at L";
        assert!(grounding_allows(t, "4"));
        assert!(!grounding_allows(t, "3"), "no herniation at L3-L4");
        assert!(!grounding_allows(t, " 3"), "a space does not dodge it");
        assert!(!grounding_allows(t, " "), "nor a space alone");
        assert!(!grounding_allows(t, "-3"), "nor a hyphen");
        assert!(!grounding_allows(t, "X1"), "nor letters that end in digits");
        assert!(grounding_allows(t, "eft"), "still a word");
        assert!(grounding_allows(&format!("{t}4"), "-"));
        assert!(grounding_allows(&format!("{t}4-"), "5"));
        assert!(grounding_allows(&format!("{t}4-"), "L"));
        assert!(
            !grounding_allows(&format!("{t}4"), "."),
            "L4 is a vertebra, the herniation is at a disc"
        );
        assert!(grounding_allows(&format!("{t}4-5"), "."));
        let normal = "No canal or foraminal narrowing at L";
        assert!(
            grounding_allows(normal, "1"),
            "a negated clause may name any level the study shows"
        );
        assert!(grounding_allows("Abnormal T2", " signal"));
        assert!(
            !Grounding {
                findings: &[],
                levels: &[]
            }
            .restricts("Left")
        );
    }

    #[test]
    fn the_impression_lists_each_finding_once_and_then_ends() {
        let head = "FINDINGS:\nCORD: Normal.\nIMPRESSION:\n1. Vertebral hemangioma in L2.\n2.";
        let again = format!("{head} Vertebral hemangioma in L2.");
        assert_eq!(check(&again, false), Verdict::Reject(head.len() + 1), "listed already");
        let filler = format!("{head} Normal marrow signal.");
        assert_eq!(
            check(&filler, false),
            Verdict::Reject(head.len() + 1),
            "states no finding"
        );
        let next = format!("{head} Severe left paracentral disc herniation at L4-5.\n");
        assert_eq!(check(&next, false), Verdict::Accept(next.len()));
        let more = format!("{next}3");
        assert_eq!(
            check(&more, false),
            Verdict::Reject(next.len()),
            "every finding is listed"
        );
    }

    #[test]
    fn denying_a_reported_finding_is_taken_back_at_the_negation() {
        let text = "FINDINGS:\nAXIAL DISCS, DURAL COMPRESSION & FORAMINA:\nNo disc herniation at any level.";
        assert_eq!(check(text, false), Verdict::Reject(text.find("No disc").unwrap()));
    }

    #[test]
    fn grades_are_required_and_unreadable_levels_do_not_dodge_the_check() {
        let text = "FINDINGS:\nMenacing left paracentral disc herniation at L4-5.";
        assert_eq!(check(text, false), Verdict::Reject(text.find("Menacing").unwrap()));
        let text = "FINDINGS:\nDISCS: Severe degenerative signal loss of the LN2-3 disc.";
        assert_eq!(check(text, false), Verdict::Reject(text.find("degenerative").unwrap()));
    }

    #[test]
    fn impression_items_are_numbered() {
        let text = "FINDINGS:\nCORD: Normal.\nIMPRESSION:\n1. Vertebral hemangioma in L2.\nSEXARITY";
        assert_eq!(check(text, false), Verdict::Reject(text.rfind("SEX").unwrap()));
    }

    #[test]
    fn headings_are_written_once_and_findings_do_not_follow_the_impression() {
        let text = "FINDINGS:\nALIGNMENT: Normal.\nALIGNMENT: Normal.";
        assert_eq!(check(text, false), Verdict::Reject(text.rfind("ALIGNMENT").unwrap()));
        let text = "FINDINGS:\nCORD: Normal.\nIMPRESSION:\n1. Vertebral hemangioma in L2.\nCORD: x.";
        assert_eq!(check(text, false), Verdict::Reject(text.rfind("CORD").unwrap()));
    }

    #[test]
    fn the_text_may_end_only_when_every_finding_is_stated() {
        let partial =
            "FINDINGS:\nSevere left paracentral disc herniation at L4-5.\nIMPRESSION:\n1. Severe herniation at L4-5.";
        assert_eq!(check(partial, true), Verdict::Continue, "the hemangioma is missing");
        let full = format!("{partial}\n2. Vertebral hemangioma in L2.");
        assert_eq!(check(&full, true), Verdict::Accept(full.len()));
    }
}
