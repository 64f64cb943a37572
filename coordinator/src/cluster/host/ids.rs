//! Checkpoint ids: validation and the default `<container>-<UTC time>`.

use anyhow::{Result, bail};
use time::OffsetDateTime;

/// Longest checkpoint id the format accepts.
pub const MAX_ID_LEN: usize = 128;

/// Checks `id` against the format's charset, `[A-Za-z0-9][A-Za-z0-9_.-]*`
/// of at most [`MAX_ID_LEN`] bytes, so a bad `--id` fails before the
/// container is frozen.
pub fn validate_checkpoint_id(id: &str) -> Result<()> {
    let mut chars = id.chars();
    let Some(first) = chars.next() else {
        bail!("a checkpoint id cannot be empty");
    };
    if !first.is_ascii_alphanumeric() {
        bail!("checkpoint id {id:?} must start with a letter or digit");
    }
    if let Some(bad) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        bail!("checkpoint id {id:?} contains {bad:?}; use letters, digits, '_', '.' and '-'");
    }
    if id.len() > MAX_ID_LEN {
        bail!("checkpoint id {id:?} is longer than {MAX_ID_LEN} characters");
    }
    Ok(())
}

/// `<container>-<UTC time to the millisecond>`, e.g.
/// `web-20261122T143000.123Z`: sorts by time per container and names its
/// source. The container part is cut so the id stays within the limit.
pub fn default_checkpoint_id(container: &str, now: OffsetDateTime) -> String {
    let stamp = compact_utc(now);
    let room = MAX_ID_LEN - stamp.len() - 1;
    let mut name: String = container
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c } else { '_' })
        .take(room)
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        name.insert(0, 'c');
        name.truncate(room);
    }
    format!("{name}-{stamp}")
}

/// `20261122T143000.123Z`.
fn compact_utc(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// A short suffix that differs between calls and processes (for lease ids).
pub fn unique_suffix() -> String {
    let now = OffsetDateTime::now_utc();
    format!("{:x}", now.unix_timestamp_nanos() as u64 & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn default_id_is_container_and_compact_utc() {
        let t = datetime!(2026-11-22 14:30:00.123456 UTC);
        assert_eq!(default_checkpoint_id("web", t), "web-20261122T143000.123Z");
        let t = datetime!(2026-01-02 03:04:05.006 +02:00);
        assert_eq!(default_checkpoint_id("a.b_c-d", t), "a.b_c-d-20260102T010405.006Z");
    }

    #[test]
    fn default_id_is_always_valid() {
        let t = datetime!(2026-11-22 14:30:00 UTC);
        for container in ["web", "-odd", "x".repeat(200).as_str(), "späti", ""] {
            let id = default_checkpoint_id(container, t);
            validate_checkpoint_id(&id).unwrap_or_else(|e| panic!("{container:?} -> {id:?}: {e}"));
            assert!(id.ends_with("-20261122T143000.000Z"), "{id}");
        }
    }

    #[test]
    fn validation_names_the_problem() {
        validate_checkpoint_id("a").unwrap();
        validate_checkpoint_id("web-1.2_3").unwrap();
        validate_checkpoint_id(&"a".repeat(128)).unwrap();
        let err = |id: &str| validate_checkpoint_id(id).unwrap_err().to_string();
        assert!(err("").contains("empty"));
        assert!(err(".hidden").contains("start with"));
        assert!(err("a/b").contains("'/'"));
        assert!(err("a b").contains("' '"));
        assert!(err(&"a".repeat(129)).contains("longer than 128"));
    }
}
