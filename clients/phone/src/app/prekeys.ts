/**
 * The phone's prekey schedule (mirrors clients/sdk/prekeys.py; docs/PROTOCOL.md §4.4, §5.3):
 * a new signed prekey every `rotation` seconds, each replaced one kept `keep` seconds more for
 * messages still in flight, then its secret deleted. Pure: the worker does the I/O, with the
 * time passed in.
 */
export const DAY = 86_400;

export interface PrekeyPolicy {
  rotation: number;
  keep: number;
}

/** The SDK's defaults (LIGHTBOX_SIGNED_PREKEY_ROTATION, LIGHTBOX_SIGNED_PREKEY_KEEP). */
export const DEFAULT_POLICY: PrekeyPolicy = { rotation: 7 * DAY, keep: 30 * DAY };

export interface SignedPrekeySecret {
  id: number;
  secret: Uint8Array;
  /** When it was made; missing in a vault written before the schedule existed (then due). */
  created_at?: number;
}

const made = (p: SignedPrekeySecret): number => p.created_at ?? 0;

/** True when the newest signed prekey is `rotation` old, or there is none. */
export function rotationDue(signed: readonly SignedPrekeySecret[], now: number, policy: PrekeyPolicy): boolean {
  if (!signed.length) return true;
  return now - Math.max(...signed.map(made)) >= policy.rotation;
}

/** The newest signed prekey (the one the relay should serve), or null. */
export function newestSignedPrekey(signed: readonly SignedPrekeySecret[]): SignedPrekeySecret | null {
  return signed.reduce<SignedPrekeySecret | null>((a, p) => (a === null || made(p) >= made(a) ? p : a), null);
}

/** The signed prekeys to keep: the newest, and each replaced one until `keep` after the
 * successor that replaced it was made. */
export function keptSignedPrekeys(signed: readonly SignedPrekeySecret[], now: number, policy: PrekeyPolicy): SignedPrekeySecret[] {
  const ordered = [...signed].sort((a, b) => made(a) - made(b));
  return ordered.filter((_, i) => i === ordered.length - 1 || now - made(ordered[i + 1]!) < policy.keep);
}
