import { Logger } from 'graphile-worker';

export type LogFn = (msg: string) => void;

/** Plain line logger: `[scope] message` on stderr, so stdout stays for what a command prints. */
export function logger(scope: string): { info: LogFn; warn: LogFn; error: LogFn } {
  const quiet = process.env.SWITCHYARD_LOG === 'silent';
  const write = (level: string) => (msg: string) => {
    if (quiet && level !== 'error') return;
    process.stderr.write(`${new Date().toISOString()} ${level} [${scope}] ${msg}\n`);
  };
  return { info: write('info'), warn: write('warn'), error: write('error') };
}

const gw = logger('graphile-worker');
/** graphile-worker is chatty at info level (one line per job); keep warnings and errors. */
export const graphileLogger = new Logger(() => (level, message) => {
  if (level === 'error') gw.error(message);
  else if (level === 'warning') gw.warn(message);
});
