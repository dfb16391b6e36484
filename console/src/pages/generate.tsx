// Generate: job type, model (GET /v1/models), template, prompt or source
// image, a dry-run price, then the job's live progress from its event stream,
// cancel, and the result with download links.
import { useEffect, useRef, useState } from "preact/hooks";
import { api, ApiError, stream } from "../api";
import { Link } from "../router";
import { ErrorMessage, Field, Notice, PageTitle, useAction, useLoad } from "../ui";

const JOB_TYPES = ["text-to-image", "image-to-image", "image-to-video"];
const ENDED = ["succeeded", "failed", "rejected", "cancelled"];
// the API cancels a job until it starts running (409 not_cancellable after)
const CANCELLABLE = ["queued", "reserved"];

interface Model {
  name: string;
  job_types: string[];
  region: string | null;
  prices: { job_type: string; price: number }[];
}

interface TemplateInput {
  name: string;
  type: "string" | "integer" | "number" | "enum" | "boolean";
  required: boolean;
  description?: string;
  enum?: string[];
  min?: number;
  max?: number;
  default?: unknown;
}

interface Template {
  id: string;
  name: string;
  job_type: string;
  description: string;
  inputs: TemplateInput[];
}

function inputValue(input: TemplateInput, raw: string): unknown {
  if (input.type === "integer") return parseInt(raw, 10);
  if (input.type === "number") return parseFloat(raw);
  if (input.type === "boolean") return raw === "true";
  return raw;
}

export interface Job {
  id: string;
  type: string;
  status: string;
  progress: number;
  stage: string | null;
  queue_position: number | null;
  price: number | null;
  error: { code: string; message: string } | null;
  outputs: string[];
  output_urls: { id: string; url: string; url_expires_at: string }[];
  model: string | null;
  provider: string | null;
}

export function Generate() {
  const models = useLoad(() => api<{ items: Model[] }>("GET", "/v1/models", { auth: false }));
  const templates = useLoad(() => api<{ items: Template[] }>("GET", "/v1/templates", { auth: false }));
  const [type, setType] = useState("text-to-image");
  const [model, setModel] = useState("");
  const [template, setTemplate] = useState("");
  const [prompt, setPrompt] = useState("");
  const [inputs, setInputs] = useState<Record<string, string>>({});
  const [source, setSource] = useState<{ id: string; url: string } | null>(null);
  const [quote, setQuote] = useState<number | null>(null);
  const [job, setJob] = useState<Job | null>(null);
  const needsSource = type !== "text-to-image";

  const body = () => {
    const value: Record<string, unknown> = { type };
    const chosen = (templates.data?.items || []).find((t) => t.id === template && t.job_type === type);
    if (chosen) {
      value.template = chosen.id;
      const given: Record<string, unknown> = {};
      for (const input of chosen.inputs) {
        const raw = inputs[input.name];
        if (raw !== undefined && raw !== "") given[input.name] = inputValue(input, raw);
      }
      value.inputs = given;
    } else if (prompt) value.prompt = prompt;
    if (model) value.model = model;
    if (needsSource && source) value.source_image_id = source.id;
    return value;
  };

  const price = useAction(async () => {
    setQuote(null);
    const answer = await api<{ price: number }>("POST", "/v1/generations", { body: body(), query: { dry_run: true } });
    setQuote(answer.price);
  });
  const submit = useAction(async () => {
    setJob(await api<Job>("POST", "/v1/generations", { body: body(), headers: { "Idempotency-Key": crypto.randomUUID() } }));
  });
  const upload = useAction(async (file: File) => {
    const form = new FormData();
    form.append("file", file);
    const image = await api<{ id: string; url: string }>("POST", "/v1/uploads", { form });
    setSource({ id: image.id, url: image.url });
  });

  useEffect(() => setQuote(null), [type, model, template, prompt, source, inputs]);

  const typeModels = (models.data?.items || []).filter((m) => m.job_types.includes(type));
  const typeTemplates = (templates.data?.items || []).filter((t) => t.job_type === type);
  const chosenTemplate = typeTemplates.find((t) => t.id === template) || null;

  return (
    <section>
      <PageTitle>Generate</PageTitle>
      <form
        class="panel"
        onSubmit={(e) => {
          e.preventDefault();
          submit.run();
        }}
      >
        <div class="field">
          <label for="field-type">Job type</label>
          <select id="field-type" name="type" value={type} onChange={(e) => setType((e.target as HTMLSelectElement).value)}>
            {JOB_TYPES.map((t) => (
              <option key={t} value={t}>
                {t}
              </option>
            ))}
          </select>
        </div>
        <div class="field">
          <label for="field-model">Model</label>
          <select id="field-model" name="model" value={model} onChange={(e) => setModel((e.target as HTMLSelectElement).value)}>
            <option value="">Automatic (with failover)</option>
            {typeModels.map((m) => {
              const p = m.prices.find((x) => x.job_type === type);
              return (
                <option key={m.name} value={m.name}>
                  {m.name}
                  {m.region ? ` · ${m.region}` : ""}
                  {p ? ` · ${p.price} credits` : ""}
                </option>
              );
            })}
          </select>
          <ErrorMessage error={models.error} />
        </div>
        {typeTemplates.length > 0 && (
          <div class="field">
            <label for="field-template">Template</label>
            <select id="field-template" name="template" value={template} onChange={(e) => setTemplate((e.target as HTMLSelectElement).value)}>
              <option value="">None</option>
              {typeTemplates.map((t) => (
                <option key={t.id} value={t.id}>
                  {t.name}
                </option>
              ))}
            </select>
          </div>
        )}
        {chosenTemplate ? (
          <fieldset class="policy">
            <legend>{chosenTemplate.name}</legend>
            {chosenTemplate.description && <p class="hint">{chosenTemplate.description}</p>}
            {chosenTemplate.inputs.map((input) => {
              const id = `field-input-${input.name}`;
              const value = inputs[input.name] ?? (input.default !== undefined && input.default !== null ? String(input.default) : "");
              const set = (v: string) => setInputs({ ...inputs, [input.name]: v });
              return (
                <div class="field" key={input.name}>
                  <label for={id}>
                    {input.name}
                    {input.required ? "" : " (optional)"}
                  </label>
                  {input.type === "enum" || input.type === "boolean" ? (
                    <select id={id} value={value} onChange={(e) => set((e.target as HTMLSelectElement).value)}>
                      {!input.required && <option value="">—</option>}
                      {(input.type === "boolean" ? ["true", "false"] : input.enum || []).map((o) => (
                        <option key={o} value={o}>
                          {o}
                        </option>
                      ))}
                    </select>
                  ) : (
                    <input
                      id={id}
                      type={input.type === "string" ? "text" : "number"}
                      min={input.min}
                      max={input.max}
                      required={input.required}
                      value={value}
                      onInput={(e) => set((e.target as HTMLInputElement).value)}
                    />
                  )}
                  {input.description && <p class="hint">{input.description}</p>}
                </div>
              );
            })}
          </fieldset>
        ) : (
          <div class="field">
            <label for="field-prompt">Prompt</label>
            <textarea id="field-prompt" name="prompt" rows={3} value={prompt} onInput={(e) => setPrompt((e.target as HTMLTextAreaElement).value)} />
          </div>
        )}
        {needsSource && (
          <div class="field">
            <label for="field-source">Source image (PNG, JPEG or WebP)</label>
            <input
              id="field-source"
              name="source"
              type="file"
              accept="image/png,image/jpeg,image/webp"
              onChange={(e) => {
                const file = (e.target as HTMLInputElement).files?.[0];
                if (file) upload.run(file);
              }}
            />
            {upload.busy && <p class="hint">Uploading…</p>}
            {source && <img class="thumb" src={source.url} alt="The uploaded source image" />}
            <ErrorMessage error={upload.error} />
          </div>
        )}
        <ErrorMessage error={price.error || submit.error} />
        {quote !== null && (
          <Notice>
            This job costs <strong data-testid="price">{quote}</strong> credits.
          </Notice>
        )}
        <div class="actions">
          <button type="button" class="secondary" disabled={price.busy} onClick={() => price.run()}>
            Show the price
          </button>
          <button type="submit" disabled={submit.busy || (needsSource && !source)}>
            Generate
          </button>
        </div>
      </form>
      {job && <JobView key={job.id} initial={job} />}
    </section>
  );
}

export function JobView({ initial }: { initial: Job }) {
  const [job, setJob] = useState<Job>(initial);
  const [streamError, setStreamError] = useState<unknown>(null);
  const jobRef = useRef(job);
  jobRef.current = job;

  useEffect(() => {
    const controller = new AbortController();
    (async () => {
      let failures = 0;
      while (!controller.signal.aborted && !ENDED.includes(jobRef.current.status)) {
        try {
          await stream(
            `/v1/generations/${encodeURIComponent(initial.id)}/events`,
            (event) => {
              if (event.event === "job") setJob(JSON.parse(event.data));
              else if (event.event === "error") setStreamError(new ApiError(0, JSON.parse(event.data).error?.code || "error", JSON.parse(event.data).error?.message || "The job could not be read."));
            },
            controller.signal,
          );
          failures = 0;
        } catch (e) {
          if (controller.signal.aborted) return;
          failures += 1;
          if (failures >= 5) {
            setStreamError(e);
            return;
          }
          await new Promise((resolve) => setTimeout(resolve, 1000 * failures));
        }
      }
    })();
    return () => controller.abort();
  }, [initial.id]);

  const cancel = useAction(async () => {
    setJob(await api<Job>("DELETE", `/v1/generations/${encodeURIComponent(job.id)}`));
  });
  const percent = Math.round((job.progress || 0) * 100);
  return (
    <section class="panel job" aria-labelledby="job-heading">
      {/* ids are UUIDv7: their head is the time, the same for jobs made together */}
      <h2 id="job-heading">Job …{job.id.slice(-8)}</h2>
      <p>
        Status: <strong data-testid="job-status">{job.status}</strong>
        {job.stage ? ` · ${job.stage}` : ""}
        {job.queue_position ? ` · position ${job.queue_position} in the queue` : ""}
        {job.price !== null && job.price !== undefined ? ` · ${job.price} credits` : ""}
        {job.status === "running" ? <span data-testid="job-progress"> · {percent}% done</span> : ""}
      </p>
      <progress max={100} value={percent} aria-label="Progress">
        {percent}%
      </progress>
      {job.error && <ErrorMessage error={new ApiError(0, job.error.code, job.error.message)} />}
      <ErrorMessage error={streamError || cancel.error} />
      {CANCELLABLE.includes(job.status) && (
        <button type="button" class="secondary" disabled={cancel.busy} onClick={() => cancel.run()}>
          Cancel
        </button>
      )}
      {job.status === "cancelled" && <Notice>Cancelled: nothing is charged, and the credits held for it are released.</Notice>}
      {job.status === "succeeded" && (
        <div class="results">
          {job.output_urls.map((output, i) => (
            <figure key={output.id}>
              {job.type === "image-to-video" ? (
                <video src={output.url} controls aria-label={`Output ${i + 1}`} />
              ) : (
                <img src={output.url} alt={`Output ${i + 1} of the job`} />
              )}
              <figcaption>
                <a href={output.url} download>
                  Download output {i + 1}
                </a>
              </figcaption>
            </figure>
          ))}
          <p>
            <Link href="/gallery">Open the gallery</Link>
          </p>
        </div>
      )}
    </section>
  );
}
