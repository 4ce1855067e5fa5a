//! pgrelay's own statements (`SET`/`SHOW`/`RESET pgrelay.*`) in the
//! extended protocol, as drivers send every statement (pgJDBC, asyncpg,
//! tokio-postgres): between transactions pgrelay answers the Parse, Bind,
//! Describe and Execute of one as a server would, with no server involved.
//! Named ones are kept with the client's statements (a driver's statement
//! cache may reuse them); the unnamed one and the unnamed portal here.
//! Within a transaction, or in a batch that already reached a server, they
//! are refused (0A000) in order, as in simple queries.

use bytes::{Buf, Bytes};

use super::Session;
use crate::frontend::error::SessionError;
use crate::router::{self, PgrelayCommand};
use crate::wire::{self, sqlstate, WireError};

/// The refusal of a pgrelay statement where a server would have to run it.
pub(super) const ONLY_BETWEEN_TRANSACTIONS: &str =
    "pgrelay.* settings are answered by pgrelay between transactions only";

/// The type of a text column.
const TEXT_OID: u32 = 25;

/// The client's unnamed statement and unnamed portal, when they are pgrelay's.
#[derive(Debug, Default)]
pub(super) struct OwnStatements {
    pub unnamed: Option<PgrelayCommand>,
    /// The unnamed portal, until the batch's Sync, with whether the client
    /// asked for its result in binary (a text value reads the same in both).
    pub portal: Option<(PgrelayCommand, bool)>,
}

impl Session {
    /// A Parse between transactions of a pgrelay statement: kept, and
    /// answered ParseComplete. False for any other text.
    pub(super) fn parse_own(&mut self, body: &[u8]) -> Result<bool, SessionError> {
        let (name, rest) = wire::read_cstr(body).ok_or(WireError::Malformed("Parse"))?;
        // The text up to its NUL: pgrelay_command stops there itself.
        let Some(command) = router::pgrelay_command(rest) else { return Ok(false) };
        if name.is_empty() {
            self.own.unnamed = Some(command);
            // The client's unnamed statement is this one now.
            self.unnamed.definition = None;
        } else if let Some((code, message)) = self.parse_refusal(name) {
            self.error_without_server(code, &message, true);
            return Ok(true);
        } else {
            self.statements.insert_own(Bytes::copy_from_slice(name), command);
        }
        wire::put_parse_complete(&mut self.out);
        Ok(true)
    }

    /// A Bind of a pgrelay statement between transactions, to the unnamed
    /// portal and without parameters (a SET or SHOW takes none).
    pub(super) fn bind_own(&mut self, body: &[u8]) -> Result<bool, SessionError> {
        if !self.has_own_statements() {
            return Ok(false);
        }
        let (portal, rest) = wire::read_cstr(body).ok_or(WireError::Malformed("Bind"))?;
        let (name, tail) = wire::read_cstr(rest).ok_or(WireError::Malformed("Bind"))?;
        let Some(command) = self.own_statement(name) else { return Ok(false) };
        let (parameters, binary) = bind_shape(tail).ok_or(WireError::Malformed("Bind"))?;
        if parameters != 0 {
            let message = format!(
                "bind message supplies {parameters} parameters, but prepared statement \"{}\" requires 0",
                String::from_utf8_lossy(name)
            );
            self.error_without_server(sqlstate::PROTOCOL_VIOLATION, &message, true);
        } else if !portal.is_empty() {
            let message = "pgrelay.* statements run in the unnamed portal only";
            self.error_without_server(sqlstate::FEATURE_NOT_SUPPORTED, message, true);
        } else {
            self.own.portal = Some((command, binary));
            wire::put_bind_complete(&mut self.out);
        }
        Ok(true)
    }

    /// A Describe of a pgrelay statement or of the portal bound to one.
    pub(super) fn describe_own(&mut self, body: &[u8]) -> Result<bool, SessionError> {
        if !self.has_own_statements() && self.own.portal.is_none() {
            return Ok(false);
        }
        let (&kind, rest) = body.split_first().ok_or(WireError::Malformed("Describe"))?;
        let (name, _) = wire::read_cstr(rest).ok_or(WireError::Malformed("Describe"))?;
        match kind {
            b'S' => {
                let Some(command) = self.own_statement(name) else { return Ok(false) };
                wire::put_no_parameters(&mut self.out);
                describe(&mut self.out, &command, false);
            }
            _ => match &self.own.portal {
                Some((command, binary)) if name.is_empty() => describe(&mut self.out, command, *binary),
                _ => return Ok(false),
            },
        }
        Ok(true)
    }

    /// The pgrelay statement a client message runs, if it is an Execute
    /// of the unnamed portal bound to one.
    pub(super) fn own_execute(&self, msg_tag: u8, msg: &[u8]) -> Option<PgrelayCommand> {
        let (command, _) = self.own.portal.as_ref()?;
        (msg_tag == wire::frontend::EXECUTE && wire::body(msg).first() == Some(&0)).then(|| command.clone())
    }

    /// Runs a pgrelay statement for an Execute: its row (SHOW) and
    /// CommandComplete, or an error that skips the rest of the batch.
    pub(super) async fn execute_own(&mut self, command: PgrelayCommand) -> Result<(), SessionError> {
        match self.run_pgrelay_command(&command).await {
            Ok(row) => {
                if let Some(value) = &row {
                    wire::put_data_row(&mut self.out, [Some(value.as_bytes())].into_iter());
                }
                wire::put_command_complete(&mut self.out, command_tag(&command));
            }
            Err((code, message)) => self.error_without_server(code, &message, true),
        }
        Ok(())
    }

    /// A pgrelay statement a message names where a server would have to
    /// answer it (in a transaction, or in a batch already sent to one):
    /// refused in order.
    pub(super) fn refuse_own_in_batch(&mut self) -> Result<(), SessionError> {
        self.raise_in_batch(sqlstate::FEATURE_NOT_SUPPORTED, ONLY_BETWEEN_TRANSACTIONS)
    }

    /// A Close of a pgrelay statement or of the portal bound to one.
    pub(super) fn close_own(&mut self, kind: u8, name: &[u8]) {
        match (kind, name.is_empty()) {
            (b'S', true) => self.own.unnamed = None,
            (b'S', false) => {
                self.statements.remove_own(name);
            }
            (_, true) => self.own.portal = None,
            _ => {}
        }
    }

    /// Whether a pinned client is between transactions: its connection
    /// idle, nothing outstanding.
    pub(super) fn pinned_idle(&self) -> bool {
        self.lease.as_ref().is_some_and(|lease| {
            let tracker = lease.conn().tracker();
            !tracker.has_outstanding() && tracker.tx_status() == wire::TxStatus::Idle
        })
    }

    /// Whether the client prepared any pgrelay statement (most never do:
    /// their Binds and Describes are not read twice).
    fn has_own_statements(&self) -> bool {
        self.own.unnamed.is_some() || self.statements.has_own()
    }

    /// The pgrelay statement of this name (empty: the unnamed one).
    pub(super) fn own_statement(&self, name: &[u8]) -> Option<PgrelayCommand> {
        match name.is_empty() {
            true => self.own.unnamed.clone(),
            false => self.statements.own(name).cloned(),
        }
    }
}

/// The command tag of a pgrelay statement.
pub(super) fn command_tag(command: &PgrelayCommand) -> &'static str {
    match command {
        PgrelayCommand::Set { .. } => "SET",
        PgrelayCommand::Show { .. } => "SHOW",
    }
}

/// The result a pgrelay statement describes: one text column for a SHOW, none for a SET.
pub(super) fn describe(out: &mut bytes::BytesMut, command: &PgrelayCommand, binary: bool) {
    match command {
        PgrelayCommand::Show { name } => wire::put_row_description_in(out, &[(name, TEXT_OID)], u16::from(binary)),
        PgrelayCommand::Set { .. } => wire::put_no_data(out),
    }
}

/// A Bind's parameter count and whether its (single or uniform) result
/// format is binary, from what follows the portal and statement names.
fn bind_shape(mut tail: &[u8]) -> Option<(usize, bool)> {
    let formats = usize::from(take_u16(&mut tail)?);
    skip(&mut tail, formats * 2)?;
    let parameters = usize::from(take_u16(&mut tail)?);
    for _ in 0..parameters {
        let len = take_u32(&mut tail)? as i32;
        skip(&mut tail, usize::try_from(len).unwrap_or(0))?;
    }
    let results = take_u16(&mut tail)?;
    let binary = results > 0 && take_u16(&mut tail)? == 1;
    Some((parameters, binary))
}

fn take_u16(buf: &mut &[u8]) -> Option<u16> {
    (buf.len() >= 2).then(|| buf.get_u16())
}

fn take_u32(buf: &mut &[u8]) -> Option<u32> {
    (buf.len() >= 4).then(|| buf.get_u32())
}

fn skip(buf: &mut &[u8], n: usize) -> Option<()> {
    (buf.len() >= n).then(|| buf.advance(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bind_is_read_for_its_parameters_and_result_format() {
        let mut out = bytes::BytesMut::new();
        wire::put_bind_text(&mut out, b"", b"s", &[b"1", b"22"]);
        let body = wire::body(&out);
        let (_, rest) = wire::read_cstr(body).expect("portal");
        let (_, tail) = wire::read_cstr(rest).expect("statement");
        assert_eq!(bind_shape(tail), Some((2, false)));
        // No formats, no parameters, one binary result format.
        assert_eq!(bind_shape(&[0, 0, 0, 0, 0, 1, 0, 1]), Some((0, true)));
        assert_eq!(bind_shape(&[0, 0, 0, 0, 0, 0]), Some((0, false)));
        // Cut short anywhere: malformed.
        assert_eq!(bind_shape(&[0, 1, 0]), None);
        assert_eq!(bind_shape(&[0, 0, 0, 1, 0, 0, 0, 9, 1]), None);
    }
}
