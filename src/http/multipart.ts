import { errors } from '../protocol/errors.js';

/**
 * multipart/form-data, for POST /v1/files only (no multipart package is a dependency): the
 * body arrives whole and bounded (the route's bodyLimit), and is split on its boundary.
 */
export interface Multipart {
  fields: Record<string, string>;
  files: Record<string, { filename: string; data: Buffer }>;
}

export function boundaryOf(contentType: string | undefined): string {
  const m = /boundary=(?:"([^"]{1,70})"|([^\s;]{1,70}))/i.exec(contentType ?? '');
  if (!m) throw errors.invalid('A multipart/form-data body needs a boundary.', null, 'invalid_multipart');
  return (m[1] ?? m[2])!;
}

export function parseMultipart(body: Buffer, boundary: string): Multipart {
  const out: Multipart = { fields: {}, files: {} };
  const delimiter = Buffer.from(`--${boundary}`);
  let at = body.indexOf(delimiter);
  if (at < 0) throw errors.invalid('The multipart body has no parts.', null, 'invalid_multipart');
  for (;;) {
    at += delimiter.length;
    if (body.subarray(at, at + 2).toString('latin1') === '--') break; // the closing delimiter
    if (body.subarray(at, at + 2).toString('latin1') !== '\r\n') throw errors.invalid('Malformed multipart body.', null, 'invalid_multipart');
    at += 2;
    const headEnd = body.indexOf('\r\n\r\n', at);
    const next = body.indexOf(Buffer.concat([Buffer.from('\r\n'), delimiter]), at);
    if (headEnd < 0 || next < 0 || headEnd > next) throw errors.invalid('Malformed multipart body.', null, 'invalid_multipart');
    const head = body.subarray(at, headEnd).toString('utf8');
    const data = body.subarray(headEnd + 4, next);
    const disposition = /^content-disposition:(.*)$/im.exec(head)?.[1] ?? '';
    const name = /\bname="([^"]*)"/i.exec(disposition)?.[1];
    const filename = /\bfilename="([^"]*)"/i.exec(disposition)?.[1];
    if (name === undefined) throw errors.invalid('A multipart part has no name.', null, 'invalid_multipart');
    if (filename !== undefined) out.files[name] = { filename, data: Buffer.from(data) };
    else out.fields[name] = data.toString('utf8');
    at = next + 2;
  }
  return out;
}
