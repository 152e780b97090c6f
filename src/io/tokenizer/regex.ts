/**
 * Oniguruma patterns (what the Rust `tokenizers` library compiles tokenizer.json regexes with) as JavaScript
 * `u`-mode RegExps. Translated: inline case-insensitive groups `(?i:...)` (ASCII letters), `\s \S \d \D \w \W`
 * with Oniguruma's Unicode meanings, `.` (everything but \n), line anchors `^ $`, literal braces. Anything with no
 * exact JavaScript equivalent (possessive quantifiers, atomic groups, \G, \h, \K, POSIX brackets, ...) throws, so
 * the caller can refuse the tokenizer by name.
 */

// Oniguruma's Unicode \s (White_Space minus U+180E, plus U+0085); JavaScript's adds U+FEFF and lacks U+0085
const SPACE = '\\t-\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const WORD = '\\p{L}\\p{M}\\p{Nd}\\p{Pc}';
const DIGIT = '\\p{Nd}';

export class RegexUnsupported extends Error {}

export function translateRegex(src: string): string {
  let out = '';
  let inClass = 0;
  // stack of open groups: whether each one is (?i:...)
  const groups: boolean[] = [];
  let ci = 0;
  const bad = (what: string): never => {
    throw new RegexUnsupported(`${what} in /${src}/`);
  };
  for (let i = 0; i < src.length; i++) {
    const c = src[i]!;
    if (c === '\\') {
      const n = src[i + 1];
      if (n === undefined) bad('a trailing backslash');
      i++;
      const cls = (members: string, negated: boolean): string => {
        if (inClass) {
          if (negated) bad(`\\${n} inside a character class`);
          return members;
        }
        return `[${negated ? '^' : ''}${members}]`;
      };
      switch (n) {
        case 's':
          out += cls(SPACE, false);
          break;
        case 'S':
          out += cls(SPACE, true);
          break;
        case 'w':
          out += cls(WORD, false);
          break;
        case 'W':
          out += cls(WORD, true);
          break;
        case 'd':
          out += inClass ? DIGIT : `[${DIGIT}]`;
          break;
        case 'D':
          out += cls(DIGIT, true);
          break;
        case 'A':
          out += '^';
          break;
        case 'z':
          out += '$';
          break;
        case 'p':
        case 'P':
        case 'x':
        case 'u': {
          // \p{..} \x{..} \xHH \uHHHH: copied (a \x{...} code point becomes \u{...})
          if (n === 'x' && src[i + 1] === '{') {
            const end = src.indexOf('}', i);
            out += `\\u{${src.slice(i + 2, end)}}`;
            i = end;
          } else if ((n === 'p' || n === 'P') && src[i + 1] === '{') {
            const end = src.indexOf('}', i);
            out += `\\${n}${src.slice(i + 1, end + 1)}`;
            i = end;
          } else out += `\\${n}`;
          break;
        }
        case 'h':
        case 'H':
        case 'G':
        case 'K':
        case 'R':
        case 'X':
        case 'Z':
        case 'b':
        case 'B':
          bad(`\\${n}`);
          break;
        default:
          if (/[0-9]/.test(n!)) bad('a back-reference');
          if (/[a-zA-Z]/.test(n!) && !/[nrtfvae]/.test(n!)) bad(`\\${n}`);
          if (n === 'a') out += '\\x07';
          else if (n === 'e') out += '\\x1b';
          // JavaScript's u mode accepts identity escapes of syntax characters only
          else if (/[\^$\\.*+?()[\]{}|/\-nrtfv]/.test(n!)) out += `\\${n}`;
          else out += n;
      }
      continue;
    }
    if (inClass) {
      if (c === '[') {
        // a nested class inside a class is a union in Oniguruma: its members join the outer class
        if (src[i + 1] === ':') bad('a POSIX bracket expression');
        if (src[i + 1] === '^') bad('a negated nested character class');
        inClass++;
        continue;
      }
      if (c === ']' && inClass > 1) {
        inClass--;
        continue;
      }
      if (c === ']') inClass--;
      if (c === '&' && src[i + 1] === '&') bad('a character-class intersection');
      if (ci > 0 && /[a-zA-Z]/.test(c)) bad('a letter in a character class inside (?i:...)');
      out += c;
      continue;
    }
    switch (c) {
      case '[':
        inClass = 1;
        out += c;
        if (src[i + 1] === '^') {
          out += '^';
          i++;
        }
        // a leading ] is literal in Oniguruma
        if (src[i + 1] === ']') {
          out += '\\]';
          i++;
        }
        break;
      case '(':
        if (src[i + 1] === '?') {
          const rest = src.slice(i + 2);
          if (rest.startsWith('i:')) {
            groups.push(true);
            ci++;
            out += '(?:';
            i += 3;
            break;
          }
          if (rest.startsWith(':') || rest.startsWith('=') || rest.startsWith('!') || rest.startsWith('<=') || rest.startsWith('<!')) {
            groups.push(false);
            out += '(';
            break;
          }
          bad(`the group (?${rest.slice(0, 2)}`);
        }
        groups.push(false);
        out += '(';
        break;
      case ')':
        if (groups.pop()) ci--;
        out += ')';
        break;
      case '.':
        out += '[^\\n]';
        break;
      case '^':
        out += '(?<![^\\n])';
        break;
      case '$':
        out += '(?![^\\n])';
        break;
      case '{': {
        const q = /^\{\d+(,\d*)?\}/.exec(src.slice(i));
        if (q) {
          out += q[0];
          i += q[0].length - 1;
          if (src[i + 1] === '+') bad('a possessive quantifier');
        } else out += '\\{';
        break;
      }
      case '}':
        out += '\\}';
        break;
      case '+':
      case '*':
      case '?':
        out += c;
        if (src[i + 1] === '+' && c !== '?') bad('a possessive quantifier');
        break;
      default:
        if (ci > 0 && /[a-zA-Z]/.test(c)) out += `[${c.toLowerCase()}${c.toUpperCase()}]`;
        else out += c;
    }
  }
  if (inClass || groups.length) bad('an unbalanced bracket');
  return out;
}

/** A global, Unicode-mode RegExp equivalent to the Oniguruma pattern; throws RegexUnsupported. */
export function onigRegExp(src: string): RegExp {
  const js = translateRegex(src);
  try {
    return new RegExp(js, 'gu');
  } catch (e) {
    throw new RegexUnsupported(`/${src}/ (${(e as Error).message})`);
  }
}

export function escapeRegExp(s: string): string {
  return s.replace(/[\\^$.*+?()[\]{}|/-]/g, '\\$&');
}
