//! Matching event names against trigger patterns.

/// Whether `name` matches `pattern`, where `*` matches any run of characters
/// (`order/*` matches `order/created`; `*` matches everything).
pub fn name_matches(pattern: &str, name: &str) -> bool {
    if !pattern.contains('*') {
        return pattern == name;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::name_matches;

    #[test]
    fn exact_names_and_wildcards() {
        assert!(name_matches("order/created", "order/created"));
        assert!(!name_matches("order/created", "order/created2"));
        assert!(name_matches("order/*", "order/created"));
        assert!(name_matches("order/*", "order/"));
        assert!(!name_matches("order/*", "orders/created"));
        assert!(name_matches("*", "anything/at.all"));
        assert!(name_matches("*/created", "order/created"));
        assert!(name_matches("a/*/c*", "a/b/cde"));
        assert!(!name_matches("a/*/c*", "a/b/d"));
        assert!(!name_matches("ab*ba", "aba"));
    }
}
