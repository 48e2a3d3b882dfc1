//! Header surgery shared by the relaying servers: `X-Peer`, `Received`, hop counting, dates.

use std::time::{SystemTime, UNIX_EPOCH};

/// The end of the header section: the index of the empty line's first byte (CRLF or LF line
/// ends), or `None` if the message has no empty line.
pub(crate) fn header_end(data: &[u8]) -> Option<usize> {
    let mut start = 0;
    while start <= data.len() {
        let end = memchr::memchr(b'\n', &data[start..]).map_or(data.len(), |i| start + i);
        let line = &data[start..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return Some(start);
        }
        if end == data.len() {
            return None;
        }
        start = end + 1;
    }
    None
}

/// Inserts `X-Peer: <ip>` where CPython's `PureProxy` does: before the first empty line (after
/// the last header), or at the end when the message has none. Uses the message's own line ends.
pub(crate) fn insert_x_peer(data: &[u8], peer_ip: &str) -> Vec<u8> {
    let crlf = data.windows(2).any(|w| w == b"\r\n") || !data.contains(&b'\n');
    let eol: &[u8] = if crlf { b"\r\n" } else { b"\n" };
    let header = format!("X-Peer: {peer_ip}");
    let mut out = Vec::with_capacity(data.len() + header.len() + 2);
    match header_end(data) {
        Some(at) => {
            out.extend_from_slice(&data[..at]);
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(eol);
            out.extend_from_slice(&data[at..]);
        }
        None => {
            out.extend_from_slice(data);
            if !data.is_empty() {
                out.extend_from_slice(eol);
            }
            out.extend_from_slice(header.as_bytes());
        }
    }
    out
}

/// How many `Received:` headers the message carries (its hop count).
pub(crate) fn count_received(data: &[u8]) -> usize {
    let headers = &data[..header_end(data).unwrap_or(data.len())];
    headers
        .split(|&b| b == b'\n')
        .filter(|line| line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:"))
        .count()
}

/// A `Received:` trace header (RFC 5321 4.4), CRLF-terminated, folded over three lines.
/// `tls`: the message came over TLS, which makes an ESMTP `with ESMTPS` (RFC 3848).
pub(crate) fn received_header(
    helo: Option<&str>,
    peer_ip: &str,
    by: &str,
    (esmtp, tls): (bool, bool),
    single_rcpt: Option<&str>,
    now: SystemTime,
) -> String {
    let from = helo.unwrap_or("unknown");
    let with = match (esmtp, tls) {
        (true, true) => "ESMTPS",
        (true, false) => "ESMTP",
        (false, _) => "SMTP",
    };
    let rcpt = single_rcpt
        .map(|r| format!(" for <{r}>"))
        .unwrap_or_default();
    format!(
        "Received: from {from} ({peer_ip})\r\n\tby {by} (smtpd-rs) with {with}{rcpt};\r\n\t{}\r\n",
        utc_date(now)
    )
}

/// An RFC 5322 date in UTC that says so (`+0000`): for the headers this relay writes itself
/// (`Received:`, notifications). `-0000` means "the zone is unknown" (RFC 5322 3.3), which is
/// what Python's `formatdate()` writes and what CPython-compatible header completion keeps.
pub(crate) fn utc_date(t: SystemTime) -> String {
    let mut date = rfc5322_date(t);
    date.truncate(date.len() - "-0000".len());
    date.push_str("+0000");
    date
}

/// A moment in UTC, broken down for the date formats the servers write.
pub(crate) struct Civil {
    /// `Mon` .. `Sun`.
    pub(crate) weekday: &'static str,
    /// `Jan` .. `Dec`.
    pub(crate) month_name: &'static str,
    pub(crate) year: i64,
    /// 1-12.
    pub(crate) month: i64,
    /// 1-31.
    pub(crate) day: i64,
    pub(crate) hour: i64,
    pub(crate) minute: i64,
    pub(crate) second: i64,
    pub(crate) micros: u32,
}

/// `t` in UTC (times before 1970 count as 1970).
pub(crate) fn civil(t: SystemTime) -> Civil {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    Civil {
        weekday: WEEKDAYS[days.rem_euclid(7) as usize],
        month_name: MONTHS[(month - 1) as usize],
        year,
        month,
        day,
        hour: rem / 3600,
        minute: rem % 3600 / 60,
        second: rem % 60,
        micros: since.subsec_micros(),
    }
}

/// An RFC 5322 date in UTC, as Python's `email.utils.formatdate()` writes it.
pub(crate) fn rfc5322_date(t: SystemTime) -> String {
    let c = civil(t);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} -0000",
        c.weekday, c.day, c.month_name, c.year, c.hour, c.minute, c.second
    )
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn our_own_headers_say_utc() {
        let at = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_date(at), "Tue, 29 Feb 2000 00:00:00 +0000");
        let received = received_header(Some("c"), "192.0.2.1", "relay", (true, false), None, at);
        assert!(
            received.ends_with("Tue, 29 Feb 2000 00:00:00 +0000\r\n"),
            "{received}"
        );
    }

    #[test]
    fn dates_match_python_formatdate() {
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(rfc5322_date(at(0)), "Thu, 01 Jan 1970 00:00:00 -0000");
        assert_eq!(
            rfc5322_date(at(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 -0000"
        );
        assert_eq!(
            rfc5322_date(at(1_795_000_000)),
            "Wed, 18 Nov 2026 11:06:40 -0000"
        );
    }

    #[test]
    fn x_peer_goes_after_the_last_header_as_in_cpython() {
        assert_eq!(
            insert_x_peer(b"A: 1\r\nB: 2\r\n\r\nbody", "1.2.3.4"),
            b"A: 1\r\nB: 2\r\nX-Peer: 1.2.3.4\r\n\r\nbody"
        );
        assert_eq!(
            insert_x_peer(b"A: 1\nB: 2\n\nbody", "::1"),
            b"A: 1\nB: 2\nX-Peer: ::1\n\nbody"
        );
        // No empty line: appended at the end, as CPython's loop runs off the end.
        assert_eq!(
            insert_x_peer(b"A: 1\r\nB: 2", "h"),
            b"A: 1\r\nB: 2\r\nX-Peer: h"
        );
        // An empty first line: inserted first.
        assert_eq!(insert_x_peer(b"\r\nbody", "h"), b"X-Peer: h\r\n\r\nbody");
        // An empty message is one empty line: the header goes before it, as in CPython.
        assert_eq!(insert_x_peer(b"", "h"), b"X-Peer: h\r\n");
    }

    #[test]
    fn hops_are_counted_in_the_header_only() {
        let msg = b"Received: a\r\nreceived: b\r\nSubject: x\r\n\r\nReceived: in body\r\n";
        assert_eq!(count_received(msg), 2);
        assert_eq!(count_received(b"no headers"), 0);
    }

    #[test]
    fn received_header_is_folded_and_terminated() {
        let h = received_header(
            Some("client.example"),
            "127.0.0.1",
            "relay.example",
            (true, false),
            Some("b@example.com"),
            UNIX_EPOCH,
        );
        assert_eq!(
            h,
            "Received: from client.example (127.0.0.1)\r\n\tby relay.example (smtpd-rs) with ESMTP for <b@example.com>;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n"
        );
    }

    #[test]
    fn received_header_over_tls_says_esmtps() {
        let h = received_header(None, "127.0.0.1", "r", (true, true), None, UNIX_EPOCH);
        assert!(h.contains(" with ESMTPS;"), "{h}");
        let h = received_header(None, "127.0.0.1", "r", (false, true), None, UNIX_EPOCH);
        assert!(h.contains(" with SMTP;"), "{h}");
    }
}
