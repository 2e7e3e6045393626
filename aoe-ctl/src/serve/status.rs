//! The one mapping from a failed ATA command to its status and error registers. Bad ATA
//! requests get ATA status errors (ERR with ABRT, IDNF or UNC), never AoE errors: the Linux
//! initiator retries AoE errors until it declares the device dead.

use aoe_common::wire::ata::{ERROR_ABRT, ERROR_IDNF, ERROR_UNC, STATUS_DRDY, STATUS_ERR};

use super::backend::BackendError;
use super::request::AtaOp;

/// Status of a command that succeeded.
pub const OK: u8 = STATUS_DRDY;
const FAIL: u8 = STATUS_DRDY | STATUS_ERR;

/// Why an ATA command failed.
#[derive(Debug)]
pub enum AtaFailure {
    /// More sectors than one frame carries, or than the reply buffer holds.
    TooLong,
    /// A write whose payload is shorter than its sector count.
    ShortPayload,
    ReadOnly,
    /// Sectors past the end of the export.
    OutOfRange,
    /// An opcode this target does not implement.
    Unsupported,
    /// The backend failed (an I/O error, a full filesystem, a shrunk file, failed closed).
    Storage(BackendError),
}

/// Status and error registers for `failure` of a command doing `op`.
pub fn registers(failure: &AtaFailure, op: AtaOp) -> (u8, u8) {
    let error = match failure {
        AtaFailure::OutOfRange | AtaFailure::Storage(BackendError::OutOfRange { .. }) => ERROR_IDNF,
        // A medium error on a read: the data could not be produced.
        AtaFailure::Storage(_) if op == AtaOp::Read => ERROR_UNC,
        _ => ERROR_ABRT,
    };
    (FAIL, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_registers() {
        let io = || {
            AtaFailure::Storage(BackendError::Syscall {
                call: "pwrite",
                source: std::io::Error::from_raw_os_error(libc::EIO),
            })
        };
        let oor = AtaFailure::Storage(BackendError::OutOfRange {
            lba: 9,
            len: 512,
            sectors: 8,
        });
        let r = |f: AtaFailure, op| registers(&f, op);
        assert_eq!(r(io(), AtaOp::Read), (FAIL, ERROR_UNC));
        assert_eq!(r(io(), AtaOp::Write), (FAIL, ERROR_ABRT));
        assert_eq!(r(io(), AtaOp::Flush), (FAIL, ERROR_ABRT));
        assert_eq!(r(oor, AtaOp::Read), (FAIL, ERROR_IDNF));
        assert_eq!(r(AtaFailure::OutOfRange, AtaOp::Write), (FAIL, ERROR_IDNF));
        assert_eq!(r(AtaFailure::ReadOnly, AtaOp::Write), (FAIL, ERROR_ABRT));
        assert_eq!(r(AtaFailure::TooLong, AtaOp::Read), (FAIL, ERROR_ABRT));
        let odd = AtaOp::Unsupported(0x99);
        assert_eq!(r(AtaFailure::Unsupported, odd), (FAIL, ERROR_ABRT));
    }
}
