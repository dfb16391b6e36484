"""Payment provider code: the Stripe Checkout client and webhook handling."""
