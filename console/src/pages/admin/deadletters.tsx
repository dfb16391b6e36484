// Dead letters: every service's non-empty dead-letter queues, a few letters
// peeked (they stay queued; no message body is shown: it can hold personal
// data), and a replay of a queue to where its letters came from.
import { useState } from "preact/hooks";
import { api } from "../../api";
import { ErrorMessage, formatDate, Notice, useAction, useLoad } from "../../ui";
import { AdminLayout, Empty, Flag } from "./common";

interface Letter {
  event: string | null;
  error: string | null;
  attempts: number | null;
  replays: number | null;
  dead_lettered_at: string | null;
  original_queue: string | null;
  correlation_id: string | null;
  expires_at: string | null;
}

interface DeadLetterQueue {
  service: string;
  queue: string;
  messages: number;
  letters: Letter[];
}

function QueueItem({ queue }: { queue: DeadLetterQueue }) {
  const [limit, setLimit] = useState("");
  const [done, setDone] = useState<string | null>(null);
  const replay = useAction(async () => {
    setDone(null);
    const body = limit.trim() ? { limit: Number(limit) } : {};
    const answer = await api<{ replayed: number }>("POST", `/v1/admin/dead-letters/${encodeURIComponent(queue.service)}/${encodeURIComponent(queue.queue)}/replay`, {
      body,
    });
    setDone(`${answer.replayed} letter(s) sent back to their queue.`);
  });
  const id = `dlq-${queue.service}-${queue.queue}`.replace(/[^A-Za-z0-9_-]/g, "-");
  return (
    <li data-testid="dead-letter-queue" class="panel">
      <div class="row">
        <h2 class="item-title" id={id}>
          {queue.service} · <code>{queue.queue}</code>
        </h2>
        <Flag>{queue.messages} waiting</Flag>
      </div>
      <ul class="list" aria-label={`Letters of ${queue.queue}`}>
        {queue.letters.map((letter, i) => (
          <li key={letter.correlation_id || i} data-testid="dead-letter">
            <strong>{letter.event || "unknown event"}</strong> from <code>{letter.original_queue || "?"}</code> · {letter.attempts ?? 0} attempt(s),{" "}
            {letter.replays ?? 0} replay(s) · dead since {formatDate(letter.dead_lettered_at)} · expires {formatDate(letter.expires_at)}
            {letter.error && (
              <>
                <br />
                <span class="job-error">{letter.error}</span>
              </>
            )}
            {letter.correlation_id && (
              <>
                <br />
                <span class="meta">
                  correlation <code>{letter.correlation_id}</code>
                </span>
              </>
            )}
          </li>
        ))}
      </ul>
      {queue.messages > queue.letters.length && <p class="meta">The first {queue.letters.length} of {queue.messages} shown.</p>}
      <form
        class="inline-form"
        onSubmit={(e) => {
          e.preventDefault();
          replay.run();
        }}
      >
        <div class="field">
          <label for={`${id}-limit`}>How many (empty: all)</label>
          <input id={`${id}-limit`} name="limit" type="number" min={1} inputMode="numeric" value={limit} onInput={(e) => setLimit((e.target as HTMLInputElement).value)} />
        </div>
        <button type="submit" disabled={replay.busy} aria-label={`Replay ${queue.queue} of ${queue.service}`}>
          Replay
        </button>
      </form>
      <ErrorMessage error={replay.error} />
      {done && <Notice>{done}</Notice>}
    </li>
  );
}

export function AdminDeadLetters({ path }: { path: string }) {
  const queues = useLoad(() => api<{ items: DeadLetterQueue[]; unavailable?: string[] }>("GET", "/v1/admin/dead-letters"));
  const unavailable = queues.data?.unavailable || [];
  return (
    <AdminLayout title="Dead letters" path={path}>
      <p>
        Messages a service could not handle after its retries. Replaying sends them back to the queue they came from; fix the cause first.{" "}
        <button type="button" class="link" onClick={() => queues.reload()}>
          Refresh
        </button>
      </p>
      <ErrorMessage error={queues.error} />
      {unavailable.length > 0 && (
        <div class="error" role="alert" data-testid="unavailable">
          <strong>Not answering, not shown:</strong> {unavailable.join(", ")}
        </div>
      )}
      {queues.data && queues.data.items.length === 0 && <Empty>No dead letters: every dead-letter queue is empty.</Empty>}
      <ul class="plain" aria-label="Dead-letter queues">
        {(queues.data?.items || []).map((q) => (
          <QueueItem key={`${q.service}/${q.queue}`} queue={q} />
        ))}
      </ul>
    </AdminLayout>
  );
}
