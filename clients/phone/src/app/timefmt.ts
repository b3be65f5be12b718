/**
 * One way to write a time for a person, as every other Lightbox client writes it
 * (clients/sdk/timefmt.py, docs/USER_GUIDE.md): `YYYY-MM-DD HH:MM`, 24-hour, in the phone's
 * local zone, formatted explicitly (never by the browser's locale, which would write
 * "3 Dec, 12:13" on one phone and "12/3, 12:13 PM" on another).
 */
export function when(seconds: number): string {
  const d = new Date(seconds * 1000);
  const two = (n: number): string => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${two(d.getHours())}:${two(d.getMinutes())}`;
}
