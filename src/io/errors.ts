/**
 * An error whose message is meant for the user as-is: one line naming the file or tensor at fault.
 * The CLI prints its message without a stack trace and exits non-zero.
 */
export class UserError extends Error {
  override name = 'UserError';
}

export function fail(message: string): never {
  throw new UserError(message);
}

/** A value as an error message shows it: JSON, or "(missing)" where there is none. */
export function shown(value: unknown): string {
  return value === undefined ? '(missing)' : (JSON.stringify(value) ?? String(value));
}
