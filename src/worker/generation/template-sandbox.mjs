// A process that renders untrusted (per-request) chat templates, so that a template that loops
// for minutes or fills memory can be stopped (or die) alone, instead of stalling or crashing the
// model thread. A process, not a worker thread: a thread that reaches its heap limit can still
// abort the whole process (nodejs/node#47224).
import { Template } from '@huggingface/jinja';

const maxChars = Number(process.argv[2]) || Infinity;

process.on('message', ({ id, template, context }) => {
  try {
    const text = new Template(template).render(context);
    // The limit is checked by the parent too; this only avoids sending a huge text across.
    process.send(text.length > maxChars ? { id, text: '', tooLong: text.length } : { id, text });
  } catch (err) {
    process.send({ id, error: err instanceof Error ? err.message : String(err) });
  }
});
// The worker went away: so does its sandbox.
process.on('disconnect', () => process.exit(0));
