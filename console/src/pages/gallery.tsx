// Gallery: the caller's uploads and outputs, paged; public or private,
// delete, download. And the public page of an image, for anyone.
import { useState } from "preact/hooks";
import { api, Page } from "../api";
import { Link, navigate, useLocation } from "../router";
import { ErrorMessage, formatDate, Notice, PageTitle, useAction, useLoad } from "../ui";

interface Image {
  id: string;
  kind: "upload" | "output";
  content_type: string;
  width: number;
  height: number;
  size: number;
  visibility: "public" | "private";
  public_id: string | null;
  job_id: string | null;
  created_at: string;
  expires_at: string | null;
  url: string;
}

const PAGE_SIZE = 12;

export function Gallery() {
  const { query } = useLocation();
  const kind = query.get("kind") || "";
  const cursor = query.get("cursor") || "";
  const page = useLoad(
    () => api<Page<Image>>("GET", "/v1/images", { query: { kind, cursor, limit: PAGE_SIZE } }),
    [kind, cursor],
  );
  const [history, setHistory] = useState<string[]>([]);
  const go = (params: { kind?: string; cursor?: string }) => {
    const next = new URLSearchParams();
    if (params.kind) next.set("kind", params.kind);
    if (params.cursor) next.set("cursor", params.cursor);
    const search = next.toString();
    navigate(search ? `/gallery?${search}` : "/gallery");
  };
  return (
    <section>
      <PageTitle>Gallery</PageTitle>
      <div class="toolbar" role="group" aria-label="Show">
        {[
          ["", "Everything"],
          ["output", "Outputs"],
          ["upload", "Uploads"],
        ].map(([value, label]) => (
          <button
            key={value}
            type="button"
            class={kind === value ? "" : "secondary"}
            aria-pressed={kind === value}
            onClick={() => {
              setHistory([]);
              go({ kind: value });
            }}
          >
            {label}
          </button>
        ))}
      </div>
      <ErrorMessage error={page.error} />
      {page.data && page.data.items.length === 0 && <p>Nothing here yet. <Link href="/generate">Generate something</Link>.</p>}
      <ul class="grid">
        {(page.data?.items || []).map((image) => (
          <ImageCard
            key={image.id}
            image={image}
            onChange={(changed) =>
              page.setData({
                ...page.data!,
                items: page.data!.items.map((i) => (i.id === changed.id ? changed : i)),
              })
            }
            onDelete={() => page.setData({ ...page.data!, items: page.data!.items.filter((i) => i.id !== image.id) })}
          />
        ))}
      </ul>
      <nav class="pager" aria-label="Pages">
        <button
          type="button"
          class="secondary"
          disabled={!cursor}
          onClick={() => {
            const previous = history.slice(0, -1);
            setHistory(previous);
            go({ kind, cursor: history[history.length - 1] || "" });
          }}
        >
          Newer
        </button>
        <button
          type="button"
          class="secondary"
          disabled={!page.data?.next_cursor}
          onClick={() => {
            setHistory([...history, cursor]);
            go({ kind, cursor: page.data!.next_cursor! });
          }}
        >
          Older
        </button>
      </nav>
    </section>
  );
}

function publicPath(image: Image): string | null {
  return image.visibility === "public" && image.public_id ? `/public/${image.public_id}` : null;
}

function ImageCard({ image, onChange, onDelete }: { image: Image; onChange: (i: Image) => void; onDelete: () => void }) {
  const toggle = useAction(async () => {
    const visibility = image.visibility === "public" ? "private" : "public";
    onChange(await api<Image>("PATCH", `/v1/images/${image.id}`, { body: { visibility } }));
  });
  const remove = useAction(async () => {
    if (!window.confirm("Delete this image? Its bytes are deleted at once.")) return;
    await api("DELETE", `/v1/images/${image.id}`);
    onDelete();
  });
  const video = image.content_type.startsWith("video/");
  const shared = publicPath(image);
  const label = `${image.kind} of ${formatDate(image.created_at)}`;
  return (
    <li class="card" data-image-id={image.id}>
      {video ? <video src={image.url} controls aria-label={label} /> : <img src={image.url} alt={label} loading="lazy" />}
      <p class="meta">
        {image.kind} · {image.width}×{image.height} · <span data-testid="visibility">{image.visibility}</span>
        {image.expires_at && <> · kept until {formatDate(image.expires_at)}</>}
      </p>
      {shared && (
        <p>
          <a href={shared} data-testid="public-link">
            Public link
          </a>
        </p>
      )}
      <div class="actions">
        <a class="button secondary" href={image.url} download>
          Download
        </a>
        <button type="button" class="secondary" disabled={toggle.busy} onClick={() => toggle.run()}>
          {image.visibility === "public" ? "Make private" : "Make public"}
        </button>
        <button type="button" class="danger" disabled={remove.busy} onClick={() => remove.run()}>
          Delete
        </button>
      </div>
      <ErrorMessage error={toggle.error || remove.error} />
    </li>
  );
}

export function PublicImage({ publicId }: { publicId: string }) {
  const image = useLoad(() => api<Image>("GET", `/v1/public/images/${encodeURIComponent(publicId)}`, { auth: false }), [publicId]);
  return (
    <section>
      <PageTitle>Shared image</PageTitle>
      <ErrorMessage error={image.error} />
      {image.data && (
        <figure class="public">
          {image.data.content_type.startsWith("video/") ? (
            <video src={image.data.url} controls aria-label="The shared video" />
          ) : (
            <img src={image.data.url} alt="The shared image" data-testid="public-image" />
          )}
          <figcaption>
            {image.data.width}×{image.data.height} · shared {formatDate(image.data.created_at)} ·{" "}
            <a href={image.data.url} download>
              Download
            </a>
          </figcaption>
        </figure>
      )}
      {!image.data && !image.error && <Notice>Loading…</Notice>}
    </section>
  );
}
