// Credits: balance, packs to buy, the ledger and the orders; the pages the
// payment provider sends the buyer back to.
import { useEffect, useState } from "preact/hooks";
import { api, Page } from "../api";
import { Link, useLocation } from "../router";
import { ErrorMessage, formatDate, Notice, PageTitle, useAction, useLoad } from "../ui";

interface Pack {
  id: string;
  name: string;
  credits: number;
  price: { amount: number; currency: string };
}

interface Order {
  id: string;
  description: string;
  credits: number;
  amount: number;
  currency: string;
  status: string;
  provider: string;
  created_at: string;
}

function money(amount: number, currency: string) {
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency: currency.toUpperCase() }).format(amount / 100);
  } catch {
    return `${amount} ${currency}`;
  }
}

export function Billing() {
  const balance = useLoad(() => api<{ available: number; held: number; plan: string }>("GET", "/v1/billing/balance"));
  const prices = useLoad(() => api<{ packs: Pack[] }>("GET", "/v1/billing/prices", { auth: false }));
  const orders = useLoad(() => api<Page<Order>>("GET", "/v1/billing/orders", { query: { limit: 10 } }));
  const ledger = useLoad(() => api<Page<{ id: string; kind: string; amount: number; balance_after: number; created_at: string }>>("GET", "/v1/billing/ledger", { query: { limit: 10 } }));
  const buy = useAction(async (packId: string) => {
    const answer = await api<{ checkout_url: string }>("POST", "/v1/billing/checkout", {
      body: { pack_id: packId },
      headers: { "Idempotency-Key": crypto.randomUUID() },
    });
    window.location.assign(answer.checkout_url);
  });
  return (
    <section>
      <PageTitle>Credits</PageTitle>
      <ErrorMessage error={balance.error || prices.error || orders.error || ledger.error} />
      {balance.data && (
        <p class="balance">
          <strong data-testid="balance">{balance.data.available}</strong> credits available
          {balance.data.held ? ` (${balance.data.held} held for running jobs)` : ""} · plan {balance.data.plan}
        </p>
      )}
      <section class="panel" aria-labelledby="packs-heading">
        <h2 id="packs-heading">Buy credits</h2>
        <ErrorMessage error={buy.error} />
        <ul class="grid">
          {(prices.data?.packs || []).map((pack) => (
            <li class="card" key={pack.id}>
              <p>
                <strong>{pack.name}</strong>
              </p>
              <p>
                {pack.credits} credits · {money(pack.price.amount, pack.price.currency)}
              </p>
              <button type="button" disabled={buy.busy} onClick={() => buy.run(pack.id)} aria-label={`Buy ${pack.name}`}>
                Buy
              </button>
            </li>
          ))}
        </ul>
      </section>
      <section class="panel" aria-labelledby="orders-heading">
        <h2 id="orders-heading">Orders</h2>
        {orders.data?.items.length === 0 && <p>No orders yet.</p>}
        <ul class="list">
          {(orders.data?.items || []).map((o) => (
            <li key={o.id} data-order-status={o.status}>
              {formatDate(o.created_at)} · {o.description} · {money(o.amount, o.currency)} · {o.status}
            </li>
          ))}
        </ul>
      </section>
      <section class="panel" aria-labelledby="ledger-heading">
        <h2 id="ledger-heading">Ledger</h2>
        <ul class="list">
          {(ledger.data?.items || []).map((e) => (
            <li key={e.id}>
              {formatDate(e.created_at)} · {e.kind} · {e.amount > 0 ? `+${e.amount}` : e.amount} · balance {e.balance_after}
            </li>
          ))}
        </ul>
      </section>
    </section>
  );
}

export function CheckoutSuccess() {
  const { query } = useLocation();
  const orderId = query.get("order_id");
  const [order, setOrder] = useState<Order | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    if (!orderId) return;
    let live = true;
    let captured = false;
    const check = async () => {
      try {
        const page = await api<Page<Order>>("GET", "/v1/billing/orders", { query: { limit: 20 } });
        let found = page.items.find((o) => o.id === orderId) || null;
        // a PayPal order is captured when the buyer comes back; Stripe's is paid by its webhook
        if (found && found.provider === "paypal" && found.status === "pending" && !captured) {
          captured = true;
          found = await api<Order>("POST", `/v1/billing/orders/${encodeURIComponent(orderId)}/capture`);
        }
        if (!live) return;
        setOrder(found);
        if (!found || found.status === "pending") setTimeout(check, 2000);
      } catch (e) {
        if (live) setError(e);
      }
    };
    check();
    return () => {
      live = false;
    };
  }, [orderId]);
  return (
    <section class="narrow">
      <PageTitle>Thank you</PageTitle>
      <ErrorMessage error={error} />
      {order && order.status === "paid" ? (
        <Notice>
          Payment received: <strong data-testid="order-credits">{order.credits}</strong> credits were added.
        </Notice>
      ) : (
        !error && <Notice>Waiting for the payment provider to confirm the payment…</Notice>
      )}
      {order && order.status !== "paid" && order.status !== "pending" && (
        <p>
          The order is <strong>{order.status}</strong>.
        </p>
      )}
      <p>
        <Link href="/billing">See your credits and orders</Link>
      </p>
    </section>
  );
}

export function CheckoutCancel() {
  return (
    <section class="narrow">
      <PageTitle>Checkout cancelled</PageTitle>
      <p>Nothing was charged.</p>
      <p>
        <Link href="/billing">Back to credits</Link>
      </p>
    </section>
  );
}
