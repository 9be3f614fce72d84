//! The system prompt: what the agent is and how it works, then the agent's
//! standing instructions and the repository's `AGENTS.md` when there are
//! any, each cut to a budget so neither can crowd out the work.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::agent::Dispatch;
use crate::text;

/// Each included document is cut to this many bytes.
pub const DOC_MAX: usize = 32 * 1024;
/// The dispatch's metadata is shown up to this many bytes.
const METADATA_MAX: usize = 4 * 1024;

const ROLE: &str = "\
You are coder, a software engineering agent. You work in a repository at \
/workspace; every path you give a tool is relative to it. You work alone: \
nobody answers questions during the task, so decide sensibly and say what \
you assumed.

Tools: read_file, write_file, edit_file (exact search/replace), list_dir, \
glob, grep, run (runs a command through the host, when its policy allows), \
remember and recall (notes kept across tasks), and finish.

How to work:
- Look before you change: find the relevant files (glob, grep) and read them.
- Make small, exact edits with edit_file; copy `search` from the file \
exactly, without the line numbers read_file shows.
- Check your work: build or run the tests with `run` when you can, and fix \
what fails.
- When done, call finish with a short summary: what you changed, how you \
verified it, and anything left undone. If the task cannot be done, finish \
and say why.";

/// The system prompt for a dispatch (its kind, session and metadata say
/// why the task came). `instructions` is the agent's standing instructions
/// file, when it has one; `workspace` holds `AGENTS.md`, when the repository
/// has one.
pub fn system_prompt(instructions: Option<&Path>, workspace: &Path, dispatch: &Dispatch) -> String {
    let mut prompt = ROLE.to_string();
    if !dispatch.kind.is_empty() {
        prompt.push_str(&format!(
            "\n\nThis task arrived as a dispatch of kind `{}`",
            dispatch.kind
        ));
        if !dispatch.session.is_empty() {
            prompt.push_str(&format!(" in session {}", dispatch.session));
        }
        prompt.push('.');
    }
    let metadata = &dispatch.metadata;
    if metadata.as_object().is_some_and(|m| !m.is_empty()) {
        let shown = text::cap(&metadata.to_string(), METADATA_MAX, "metadata cut");
        prompt.push_str(&format!(" Its metadata: {shown}"));
    }
    if let Some(doc) = instructions.and_then(read_doc) {
        prompt.push_str("\n\n## Your standing instructions\n\n");
        prompt.push_str(&doc);
    }
    if let Some(doc) = read_doc(&workspace.join("AGENTS.md")) {
        prompt.push_str("\n\n## The repository's AGENTS.md\n\n");
        prompt.push_str(&doc);
    }
    prompt
}

/// A document's text cut to [`DOC_MAX`] bytes with a note, or `None` when
/// it is missing, unreadable or blank. Reads only a little past the budget,
/// whatever the file's size.
fn read_doc(path: &Path) -> Option<String> {
    let file = File::open(path).ok()?;
    let size = file.metadata().ok()?.len();
    let mut bytes = Vec::new();
    file.take(DOC_MAX as u64 + 4).read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    if text.trim().is_empty() {
        return None;
    }
    if size as usize > DOC_MAX || text.len() > DOC_MAX {
        let kept = text::prefix(&text, DOC_MAX);
        return Some(format!(
            "{kept}\n[cut: the first {} of {size} bytes of {}]",
            kept.len(),
            path.display()
        ));
    }
    Some(text.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use serde_json::{Value, json};

    fn dispatch(kind: &str, metadata: Value) -> Dispatch {
        Dispatch {
            prompt: String::new(),
            model: None,
            max_tokens: None,
            kind: kind.into(),
            session: if kind.is_empty() {
                String::new()
            } else {
                "s1".into()
            },
            metadata,
        }
    }

    #[test]
    fn the_role_alone_when_there_is_nothing_else() {
        let dir = TempDir::new();
        let prompt = system_prompt(None, dir.path(), &dispatch("", json!({})));
        assert_eq!(prompt, ROLE);
    }

    #[test]
    fn instructions_agents_md_kind_and_metadata_are_included() {
        let dir = TempDir::new();
        dir.write("AGENTS.md", "Run `make check` before finishing.");
        dir.write("agent/instructions.md", "Be terse.");
        let instructions = dir.path().join("agent/instructions.md");
        let prompt = system_prompt(
            Some(&instructions),
            dir.path(),
            &dispatch("task:fix", json!({"ticket": 42})),
        );
        assert!(prompt.starts_with(ROLE));
        assert!(
            prompt.contains(
                "dispatch of kind `task:fix` in session s1. Its metadata: {\"ticket\":42}"
            )
        );
        assert!(prompt.contains("## Your standing instructions\n\nBe terse."));
        assert!(prompt.contains("## The repository's AGENTS.md\n\nRun `make check`"));
        let missing = dir.path().join("nope.md");
        let prompt = system_prompt(Some(&missing), dir.path(), &dispatch("a2a", json!({})));
        assert!(!prompt.contains("standing instructions"));
    }

    #[test]
    fn long_documents_are_cut_with_a_note() {
        let dir = TempDir::new();
        dir.write("AGENTS.md", &"é".repeat(DOC_MAX));
        let prompt = system_prompt(None, dir.path(), &dispatch("", json!({})));
        let doc = prompt
            .split("## The repository's AGENTS.md\n\n")
            .nth(1)
            .unwrap();
        assert!(doc.len() < DOC_MAX + 200);
        assert!(doc.contains(&format!(
            "[cut: the first {DOC_MAX} of {} bytes of",
            2 * DOC_MAX
        )));
    }
}
