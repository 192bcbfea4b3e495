ALTER TABLE payments DROP COLUMN unanswered;
