//! Revision spellings: the trailing `~n`/`^n` navigation Steward resolves itself.

/// One trailing navigation step of a revision: `~n` (`n`th first-parent ancestor) or `^n`
/// (`n`th parent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Ancestor(usize),
    Parent(usize),
}

/// Split trailing `~n`/`^n` steps (`~` and `^` alone mean 1) off `rev`, in application order.
/// Spellings with `:` (paths, `:/message` searches) are left whole, since `~` or `^` there is
/// not navigation; ref names cannot contain either character, so elsewhere the split is exact.
pub(super) fn split_navigation(rev: &str) -> (&str, Vec<Step>) {
    if rev.contains(':') {
        return (rev, Vec::new());
    }
    let mut base = rev;
    let mut steps = Vec::new();
    loop {
        let digits = base.len() - base.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let (head, number) = base.split_at(base.len() - digits);
        let n = if number.is_empty() {
            Some(1)
        } else {
            number.parse::<usize>().ok()
        };
        let step = match (head.chars().next_back(), n) {
            (Some('~'), Some(n)) => Step::Ancestor(n),
            (Some('^'), Some(n)) => Step::Parent(n),
            _ => break,
        };
        let rest = &head[..head.len() - 1];
        if rest.is_empty() {
            break;
        }
        steps.push(step);
        base = rest;
    }
    steps.reverse();
    (base, steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_trailing_navigation() {
        use Step::*;
        assert_eq!(split_navigation("HEAD"), ("HEAD", vec![]));
        assert_eq!(split_navigation("HEAD~"), ("HEAD", vec![Ancestor(1)]));
        assert_eq!(split_navigation("HEAD~12"), ("HEAD", vec![Ancestor(12)]));
        assert_eq!(
            split_navigation("main^2~3^"),
            ("main", vec![Parent(2), Ancestor(3), Parent(1)])
        );
        assert_eq!(split_navigation("v1^{}~1"), ("v1^{}", vec![Ancestor(1)]));
        assert_eq!(
            split_navigation("HEAD@{2}^0"),
            ("HEAD@{2}", vec![Parent(0)])
        );
        assert_eq!(split_navigation("~1"), ("~1", vec![]));
        assert_eq!(split_navigation("HEAD:a~1"), ("HEAD:a~1", vec![]));
        assert_eq!(split_navigation("abc123"), ("abc123", vec![]));
    }
}
