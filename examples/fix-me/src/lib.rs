//! A crate with a bug for the coder agent to fix: `cargo test` fails.

/// The sum of two numbers.
pub fn add(a: i64, b: i64) -> i64 {
    a - b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds() {
        assert_eq!(add(2, 2), 4);
        assert_eq!(add(-1, 3), 2);
    }
}
