ALTER TABLE balances RESET (fillfactor);
