-- One database per service that owns relational state.
CREATE DATABASE leaky_auth;
CREATE DATABASE leaky_token;
