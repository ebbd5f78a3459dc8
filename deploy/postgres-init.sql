-- Run once by the postgres image when its volume is new: the ML servers' cache store is a
-- database of its own beside the app database (POSTGRES_DB), owned by the same user.
CREATE DATABASE tagdesk_ml_cache OWNER tagdesk;
