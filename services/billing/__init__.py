"""The billing service: an exactly-once credit ledger (lots, holds, expiry),
plans with monthly grants, job prices, and credit packs and paid plans sold
through Stripe Checkout with signed webhooks. See docs/billing.md."""
