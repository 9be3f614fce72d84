//! Consensus: one prompt answered by several guests (and models) in
//! parallel, then one answer. When every answer is a yes or a no, the
//! majority wins and the default guest breaks a tie; otherwise the default
//! guest is asked to merge the answers ([`synthesis_prompt`]).

/// A yes or a no, read from the answer's first word.
pub fn yes_no(reply: &str) -> Option<bool> {
    let first: String = reply
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric())
        .collect::<String>()
        .to_lowercase();
    match first.as_str() {
        "yes" | "y" | "agree" | "agreed" | "approve" | "approved" | "lgtm" | "true" | "correct"
        | "affirmative" => Some(true),
        "no" | "n" | "disagree" | "reject" | "rejected" | "false" | "incorrect" | "negative" => {
            Some(false)
        }
        _ => None,
    }
}

/// One voter's answer: who (guest and model) and what.
#[derive(Clone, Debug)]
pub struct Answer {
    pub guest: String,
    pub model: Option<String>,
    pub reply: String,
}

/// What the answers add up to.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Every answer was a yes or a no: the winning side's answer (the
    /// default guest's when it is on that side), and the count.
    Vote {
        reply: String,
        yes: usize,
        no: usize,
    },
    /// Free-form answers: merge them.
    Synthesize,
}

/// Adds up the answers; `default` is the default guest's name.
pub fn aggregate(answers: &[Answer], default: &str) -> Outcome {
    let votes: Option<Vec<bool>> = answers.iter().map(|a| yes_no(&a.reply)).collect();
    let Some(votes) = votes.filter(|v| !v.is_empty()) else {
        return Outcome::Synthesize;
    };
    let yes = votes.iter().filter(|v| **v).count();
    let no = votes.len() - yes;
    let winner = match yes.cmp(&no) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        // A tie: the default guest's vote, or its first if it voted twice
        // (two models); without it, the first answer's.
        std::cmp::Ordering::Equal => answers
            .iter()
            .zip(&votes)
            .find(|(a, _)| a.guest == default)
            .map_or(votes[0], |(_, v)| *v),
    };
    let pairs: Vec<(&Answer, &bool)> = answers.iter().zip(&votes).collect();
    let chosen = pairs
        .iter()
        .find(|(a, v)| **v == winner && a.guest == default)
        .or_else(|| pairs.iter().find(|(_, v)| **v == winner))
        .map(|(a, _)| a.reply.clone())
        .unwrap_or_default();
    Outcome::Vote {
        reply: chosen,
        yes,
        no,
    }
}

/// The prompt that asks the default guest to merge free-form answers.
pub fn synthesis_prompt(prompt: &str, answers: &[Answer]) -> String {
    let mut out = format!(
        "Several agents answered the same prompt. Merge their answers into one coherent answer; where they disagree, say so and choose with reasons.\n\nThe prompt:\n{prompt}\n"
    );
    for (i, a) in answers.iter().enumerate() {
        let model = a
            .model
            .as_deref()
            .map(|m| format!(", model {m}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "\n--- answer {} (guest {}{model}) ---\n{}\n",
            i + 1,
            a.guest,
            a.reply.trim_end()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(guest: &str, reply: &str) -> Answer {
        Answer {
            guest: guest.into(),
            model: None,
            reply: reply.into(),
        }
    }

    #[test]
    fn yes_and_no_are_read_from_the_first_word() {
        assert_eq!(yes_no("Yes, ship it."), Some(true));
        assert_eq!(yes_no("  LGTM"), Some(true));
        assert_eq!(yes_no("No."), Some(false));
        assert_eq!(yes_no("disagree: the test fails"), Some(false));
        assert_eq!(yes_no("Nope"), None);
        assert_eq!(yes_no("Maybe"), None);
        assert_eq!(yes_no(""), None);
    }

    #[test]
    fn three_guests_the_majority_wins() {
        let answers = [a("g1", "no, it breaks"), a("g2", "yes"), a("g3", "Yes.")];
        assert_eq!(
            aggregate(&answers, "g1"),
            Outcome::Vote {
                reply: "yes".into(),
                yes: 2,
                no: 1
            }
        );
    }

    #[test]
    fn a_tie_goes_to_the_default_guest() {
        let answers = [
            a("g1", "yes"),
            a("g2", "no"),
            a("g3", "no"),
            a("g4", "yes!"),
        ];
        let Outcome::Vote { reply, .. } = aggregate(&answers, "g2") else {
            panic!()
        };
        assert_eq!(reply, "no");
        let Outcome::Vote { reply, .. } = aggregate(&answers, "g4") else {
            panic!()
        };
        assert_eq!(reply, "yes!");
    }

    #[test]
    fn free_form_answers_are_merged_by_the_default_guest() {
        let answers = [
            a("g1", "yes"),
            a("g2", "It depends on the load."),
            a("g3", "no"),
        ];
        assert_eq!(aggregate(&answers, "g1"), Outcome::Synthesize);
        let p = synthesis_prompt("Should we cache?", &answers);
        assert!(p.contains("Should we cache?"));
        assert!(p.contains("--- answer 2 (guest g2) ---\nIt depends on the load."));
        assert_eq!(aggregate(&[], "g1"), Outcome::Synthesize);
    }
}
