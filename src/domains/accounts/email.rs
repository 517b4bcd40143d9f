//! One spelling per email address, so one account cannot be reached (or
//! registered twice, or rate-limited separately) under look-alike spellings.
//!
//! NFKC folds compatibility forms (full-width letters, ligatures) into
//! their plain letters; then lowercase and trim. Invisible characters (format
//! characters such as zero-width spaces and joiners, bidi controls, variation
//! selectors and other default-ignorable code points) and control characters
//! are refused rather than dropped: nothing typed by a person needs them.

use unicode_normalization::UnicodeNormalization;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("not an email address")]
    Malformed,
    #[error("the email address contains invisible or control characters")]
    Invisible,
}

/// Longest address, in bytes (RFC 5321's path limit).
const MAX_BYTES: usize = 254;

/// General category Cf and default-ignorable code points (Unicode 15.1),
/// inclusive ranges.
const INVISIBLE: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
];

/// The one spelling of `raw` used to store, look up and rate-limit accounts.
pub fn normalize_email(raw: &str) -> Result<String, EmailError> {
    let trimmed = raw.trim();
    if trimmed.chars().any(refused) {
        return Err(EmailError::Invisible);
    }
    // Lowercasing can leave a string that is no longer in NFKC (e.g. U+0130):
    // normalize again.
    let email: String = trimmed
        .nfkc()
        .collect::<String>()
        .to_lowercase()
        .nfkc()
        .collect();
    let email = email.trim();
    if email.chars().any(refused) {
        return Err(EmailError::Invisible);
    }
    let valid = email.len() <= MAX_BYTES
        && !email.chars().any(char::is_whitespace)
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        });
    if valid {
        Ok(email.to_owned())
    } else {
        Err(EmailError::Malformed)
    }
}

fn refused(c: char) -> bool {
    let code = u32::from(c);
    c.is_control()
        || INVISIBLE
            .iter()
            .any(|&(first, last)| (first..=last).contains(&code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_lowercased_and_nfkc_folded() {
        assert_eq!(
            normalize_email(" Ann@Example.com ").unwrap(),
            "ann@example.com"
        );
        // Full-width letters and the `ﬀ` ligature are compatibility forms.
        assert_eq!(
            normalize_email("ＡＮＮ@example.com").unwrap(),
            "ann@example.com"
        );
        assert_eq!(
            normalize_email("e\u{FB00}@example.com").unwrap(),
            "eff@example.com"
        );
        // Composed and decomposed é are one spelling.
        assert_eq!(
            normalize_email("Ren\u{E9}@example.com").unwrap(),
            normalize_email("Rene\u{301}@example.com").unwrap()
        );
    }

    #[test]
    fn invisible_and_control_characters_are_refused() {
        for bad in [
            "an\u{200B}n@example.com",
            "an\u{200C}n@example.com",
            "an\u{200D}n@example.com",
            "an\u{2060}n@example.com",
            "\u{FEFF}ann@example.com",
            "ann@exam\u{AD}ple.com",
            "ann@example.com\u{202E}",
            "ann\u{FE0F}@example.com",
            "ann\u{E0041}@example.com",
            "ann\u{0}@example.com",
            "ann\u{7F}@example.com",
            "ann@exa\u{1B}mple.com",
        ] {
            assert_eq!(
                normalize_email(bad),
                Err(EmailError::Invisible),
                "{:?}",
                bad
            );
        }
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for bad in [
            "",
            "ann",
            "@example.com",
            "ann@localhost",
            "a b@example.com",
            "a@b@example.com",
            // An ideographic space is whitespace after folding too.
            "a\u{3000}b@example.com",
        ] {
            assert_eq!(normalize_email(bad), Err(EmailError::Malformed), "{bad:?}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(normalize_email(&long), Err(EmailError::Malformed));
    }
}
