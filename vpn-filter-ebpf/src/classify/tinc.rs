//! tinc's meta connection: both sides open it with an ID line, `0 <name> 17\n` (tinc 1.0) or
//! `0 <name> 17.<minor>\n` (tinc 1.1), where `0` is the ID request and 17 the protocol's
//! major version. Node names are `[A-Za-z0-9_]+`.

use super::*;

/// Longest node name followed: the line must end inside the classifier's window.
const MAX_NAME: usize = WINDOW - 8;

#[inline(always)]
fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Strong: the whole line must follow the grammar and end in a newline inside the window,
/// and the stream must hold it (`len` counts from the stream's start).
#[inline(always)]
pub(super) fn id_line(w: &[u8; WINDOW], len: usize) -> Option<Detection> {
    if !is_head([w[0], w[1], w[2], w[3]]) {
        return None;
    }
    // The name: from [2] to the next space.
    let mut i = 3;
    while i < MAX_NAME {
        // SAFETY: i < MAX_NAME < WINDOW.
        let c = unsafe { *w.get_unchecked(i) };
        if c == b' ' {
            break;
        }
        if !is_name_char(c) {
            return None;
        }
        i += 1;
    }
    if i >= MAX_NAME {
        return None;
    }
    // " 17", then "\n" or "." with 1..=3 digits and "\n".
    // SAFETY (all reads below): i < MAX_NAME = WINDOW - 8, so i + 7 < WINDOW.
    let at = |k: usize| unsafe { *w.get_unchecked(i + k) };
    if at(1) != b'1' || at(2) != b'7' {
        return None;
    }
    let end = if at(3) == b'\n' {
        i + 4
    } else if at(3) == b'.' && at(4).is_ascii_digit() {
        if at(5) == b'\n' {
            i + 6
        } else if at(5).is_ascii_digit() && at(6) == b'\n' {
            i + 7
        } else {
            return None;
        }
    } else {
        return None;
    };
    if len < end {
        return None;
    }
    Some(Detection::new(
        Protocol::Tinc,
        Message::TincId,
        Strength::Strong,
    ))
}

/// The prefilter's check: `0 ` and the first two characters of a name.
#[inline(always)]
pub(super) fn is_head(head: [u8; 4]) -> bool {
    head[0] == b'0'
        && head[1] == b' '
        && is_name_char(head[2])
        && (is_name_char(head[3]) || head[3] == b' ')
}
