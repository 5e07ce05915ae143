DROP TABLE audit_logs;
DROP TABLE transactions;
DROP TABLE balances;
