// Credits: balance, packs to buy, the ledger and the orders; the pages the
// payment provider sends the buyer back to.
import { useEffect, useState } from "preact/hooks";
import { api, ApiError, Page } from "../api";
import { Link, useLocation } from "../router";
import { ErrorMessage, formatDate, Notice, PageTitle, useAction, useLoad } from "../ui";

interface Pack {
  id: string;
  name: string;
  credits: number;
  price: { amount: number; currency: string };
}

interface Plan {
  id: string;
  name: string;
  price: { amount: number; currency: string } | null;
  monthly_grant: number;
  retention_days: number;
}

interface Subscription {
  plan: string;
  status: string;
  cancel_at_period_end: boolean;
  current_period_end: string | null;
  grace_until: string | null;
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
  const plans = useLoad(() => api<{ items: Plan[] }>("GET", "/v1/billing/plans", { auth: false }));
  const subscription = useLoad(() =>
    api<Subscription>("GET", "/v1/billing/subscription").catch((e) => {
      if (e instanceof ApiError && e.status === 404) return null; // never subscribed
      throw e;
    }),
  );
  const [provider, setProvider] = useState("stripe");
  const buy = useAction(async (item: { pack_id: string } | { plan_id: string }) => {
    const answer = await api<{ checkout_url: string }>("POST", "/v1/billing/checkout", {
      body: { ...item, provider },
      headers: { "Idempotency-Key": crypto.randomUUID() },
    });
    window.location.assign(answer.checkout_url);
  });
  const cancelPlan = useAction(async () => {
    subscription.setData(await api<Subscription>("POST", "/v1/billing/subscription/cancel"));
  });
  const portal = useAction(async () => {
    window.location.assign((await api<{ url: string }>("GET", "/v1/billing/portal")).url);
  });
  const sub = subscription.data;
  const live = sub && ["active", "past_due", "trialing"].includes(sub.status);
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
      <div class="field">
        <label for="field-provider">Pay with</label>
        <select id="field-provider" name="provider" value={provider} onChange={(e) => setProvider((e.target as HTMLSelectElement).value)}>
          <option value="stripe">Card (Stripe)</option>
          <option value="paypal">PayPal</option>
        </select>
      </div>
      <ErrorMessage error={buy.error} />
      <section class="panel" aria-labelledby="plan-heading">
        <h2 id="plan-heading">Plan</h2>
        <ErrorMessage error={plans.error || subscription.error || cancelPlan.error || portal.error} />
        {sub && (
          <p data-testid="subscription">
            Subscription to <strong>{sub.plan}</strong>: {sub.status}
            {sub.current_period_end && <> · {sub.cancel_at_period_end ? "ends" : "renews"} {formatDate(sub.current_period_end)}</>}
            {sub.grace_until && <> · payment due by {formatDate(sub.grace_until)}</>}
          </p>
        )}
        {live && (
          <div class="actions">
            {!sub!.cancel_at_period_end && (
              <button type="button" class="secondary" disabled={cancelPlan.busy} onClick={() => cancelPlan.run()}>
                Cancel at the end of the period
              </button>
            )}
            <button type="button" class="secondary" disabled={portal.busy} onClick={() => portal.run()}>
              Manage payment and invoices
            </button>
          </div>
        )}
        <ul class="grid">
          {(plans.data?.items || []).map((plan) => (
            <li class="card" key={plan.id}>
              <p>
                <strong>{plan.name}</strong>
                {balance.data?.plan === plan.id && " (your plan)"}
              </p>
              <p>
                {plan.price ? `${money(plan.price.amount, plan.price.currency)} a month` : "free"} · {plan.monthly_grant} credits a month · images kept {plan.retention_days} days
              </p>
              {plan.price && balance.data?.plan !== plan.id && !live && (
                <button type="button" disabled={buy.busy} onClick={() => buy.run({ plan_id: plan.id })} aria-label={`Subscribe to ${plan.name}`}>
                  Subscribe
                </button>
              )}
            </li>
          ))}
        </ul>
      </section>
      <section class="panel" aria-labelledby="packs-heading">
        <h2 id="packs-heading">Buy credits</h2>
        <ul class="grid">
          {(prices.data?.packs || []).map((pack) => (
            <li class="card" key={pack.id}>
              <p>
                <strong>{pack.name}</strong>
              </p>
              <p>
                {pack.credits} credits · {money(pack.price.amount, pack.price.currency)}
              </p>
              <button type="button" disabled={buy.busy} onClick={() => buy.run({ pack_id: pack.id })} aria-label={`Buy ${pack.name}`}>
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
