/**
 * The exception tree of the protocol core, mirroring protocol/errors.py (docs/PROTOCOL.md §9):
 *
 *   ProtocolError            base of everything thrown by src/protocol/
 *   ├── DecodeError          malformed, unknown, oversize or wrong-version input
 *   │   └── LimitExceeded    a size or count limit was exceeded
 *   ├── VerificationError    any failed decrypt, signature or chain check (opaque: the reason
 *   │                        stays in `.reason` for the local log, never shown to a peer)
 *   ├── ReplayError          a message id already seen
 *   └── PolicyDenied         a well-formed request that policy refuses (consent)
 *
 * Each carries `.code`, a stable error code string from docs/SECURITY.md.
 */

export class ProtocolError extends Error {
  readonly code: string;
  readonly reason: string;
  constructor(reason: string, code: string) {
    super(`${code}: ${reason}`);
    this.code = code;
    this.reason = reason;
    this.name = new.target.name;
  }
}

export class DecodeError extends ProtocolError {
  constructor(reason: string, code = "validation_failed") {
    super(reason, code);
  }
}

export class LimitExceeded extends DecodeError {
  constructor(reason: string, code = "payload_too_large") {
    super(reason, code);
  }
}

export class VerificationError extends ProtocolError {
  constructor(reason: string, code = "verification_failed") {
    super(reason, code);
  }
}

export class ReplayError extends ProtocolError {
  constructor(reason: string) {
    super(reason, "replayed");
  }
}

export class PolicyDenied extends ProtocolError {}
