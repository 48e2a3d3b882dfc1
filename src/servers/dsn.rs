//! Delivery status notifications (RFC 3464) for recipients a relay refused after the client
//! had already been told `250`: the report a relay owes the sender so that mail never vanishes
//! in silence.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::headers::{header_end, utc_date};
use crate::smtp::Reply;

/// Most bytes of the original message's header section quoted in the report.
const MAX_QUOTED_HEADERS: usize = 32 * 1024;

/// A recipient the next hop refused permanently, with its reply.
pub(crate) struct Failed<'a> {
    pub(crate) rcpt: &'a str,
    pub(crate) reply: &'a Reply,
}

/// The status code of a refusal for `Status:` (RFC 3463): the reply's own enhanced code, or
/// `5.0.0`.
fn status(reply: &Reply) -> String {
    match reply.enhanced_code() {
        Some(code) => code.to_string(),
        None => format!("{}.0.0", reply.code / 100),
    }
}

/// Text that goes into a header or a report field on one line, in 7-bit ASCII.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The notification, as message data (CRLF lines, no final CRLF: what `Client::data` takes).
/// `hostname` is the reporting relay, `next_hop` the server that refused (for the text),
/// `original` the message as it was received (its header section is quoted).
pub(crate) fn report(
    hostname: &str,
    next_hop: &str,
    sender: &str,
    failed: &[Failed<'_>],
    original: &[u8],
    now: SystemTime,
) -> Vec<u8> {
    static SERIAL: AtomicU64 = AtomicU64::new(1);
    let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
    let stamp = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let boundary = format!("{stamp}.{serial}/{hostname}");
    let date = utc_date(now);
    let host = one_line(hostname);
    let mut m = String::new();
    let mut line = |s: &str| {
        m.push_str(s);
        m.push_str("\r\n");
    };
    line(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{host}>"
    ));
    line(&format!("To: <{}>", one_line(sender)));
    line("Subject: Undelivered Mail Returned to Sender");
    line(&format!("Date: {date}"));
    line(&format!("Message-ID: <{stamp}.{serial}.dsn@{host}>"));
    line("Auto-Submitted: auto-replied");
    line("MIME-Version: 1.0");
    line(&format!(
        "Content-Type: multipart/report; report-type=delivery-status; boundary=\"{boundary}\""
    ));
    line("");
    line("This is a MIME-encapsulated message.");
    line("");
    line(&format!("--{boundary}"));
    line("Content-Type: text/plain; charset=us-ascii");
    line("");
    line(&format!("This is the mail relay at {host}."));
    line("");
    line("Your message was accepted for the recipients below, but the next mail server");
    line("refused them, so it could not be delivered to them:");
    line("");
    for f in failed {
        line(&format!(
            "<{}>: {} said: {} {}",
            one_line(f.rcpt),
            one_line(next_hop),
            f.reply.code,
            one_line(&f.reply.text())
        ));
    }
    line("");
    line(&format!("--{boundary}"));
    line("Content-Type: message/delivery-status");
    line("");
    line(&format!("Reporting-MTA: dns; {host}"));
    line(&format!("Arrival-Date: {date}"));
    for f in failed {
        line("");
        line(&format!("Final-Recipient: rfc822; {}", one_line(f.rcpt)));
        line("Action: failed");
        line(&format!("Status: {}", status(f.reply)));
        line(&format!(
            "Diagnostic-Code: smtp; {} {}",
            f.reply.code,
            one_line(&f.reply.text())
        ));
    }
    line("");
    line(&format!("--{boundary}"));
    line("Content-Type: text/rfc822-headers");
    line("");
    let mut out = m.into_bytes();
    let headers = &original[..header_end(original).unwrap_or(original.len())];
    let headers = &headers[..headers.len().min(MAX_QUOTED_HEADERS)];
    // Quoted with CRLF line ends only: the report must carry no bare CR or LF.
    for l in headers.split(|&b| b == b'\n') {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        if l.is_empty() {
            continue;
        }
        out.extend(l.iter().map(|&b| if b == b'\r' { b' ' } else { b }));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::EnhancedCode;

    #[test]
    fn a_report_names_each_refused_recipient_with_its_status() {
        let r1 = Reply::enhanced(550, EnhancedCode::new(5, 1, 1), "No such user");
        let r2 = Reply::new(554, "Rejected");
        let failed = [
            Failed {
                rcpt: "x@example.org",
                reply: &r1,
            },
            Failed {
                rcpt: "y@example.org",
                reply: &r2,
            },
        ];
        let original = b"Subject: hi\r\nFrom: a@example.com\r\n\r\nbody\r\n";
        let dsn = report(
            "relay.example",
            "mx.example.org",
            "a@example.com",
            &failed,
            original,
            SystemTime::UNIX_EPOCH,
        );
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("To: <a@example.com>\r\n"));
        assert!(text.contains("report-type=delivery-status"));
        assert!(text.contains("Final-Recipient: rfc822; x@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 No such user\r\n"));
        assert!(text.contains(
            "Final-Recipient: rfc822; y@example.org\r\nAction: failed\r\nStatus: 5.0.0\r\n"
        ));
        assert!(text.contains(
            "Content-Type: text/rfc822-headers\r\n\r\nSubject: hi\r\nFrom: a@example.com\r\n"
        ));
        assert!(!text.contains("body"), "only the headers are quoted");
        assert!(text.ends_with("--"));
        // No bare CR or LF anywhere.
        let bytes = text.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'\n' {
                assert_eq!(bytes[i - 1], b'\r');
            }
            if b == b'\r' {
                assert_eq!(bytes.get(i + 1), Some(&b'\n'));
            }
        }
    }
}
