# The MLflow tracking server: an ECS service with a Postgres backend store on RDS and the artifact
# store in the mlflow bucket, reachable inside the VPC at mlflow.<environment>.mlops.internal:5000.
resource "aws_db_subnet_group" "mlflow" {
  name       = "${local.name}-mlflow"
  subnet_ids = var.private_subnet_ids
}

resource "aws_security_group" "mlflow_db" {
  name        = "${local.name}-mlflow-db"
  description = "MLflow's Postgres: only the MLflow server"
  vpc_id      = var.vpc_id

  ingress {
    description     = "Postgres from the MLflow server"
    from_port       = 5432
    to_port         = 5432
    protocol        = "tcp"
    security_groups = [aws_security_group.mlflow.id]
  }
}

resource "aws_db_parameter_group" "mlflow" {
  name   = "${local.name}-mlflow"
  family = "postgres16"

  parameter {
    name  = "log_statement"
    value = "ddl"
  }
  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }
  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }
}

resource "aws_iam_role" "rds_monitoring" {
  name = "${local.name}-rds-monitoring"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "monitoring.rds.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  role       = aws_iam_role.rds_monitoring.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

resource "aws_db_instance" "mlflow" {
  identifier                          = "${local.name}-mlflow"
  engine                              = "postgres"
  engine_version                      = "16"
  instance_class                      = var.db_instance_class
  allocated_storage                   = 20
  max_allocated_storage               = 200
  db_name                             = "mlflow"
  username                            = "mlflow"
  manage_master_user_password         = true # the password lives in Secrets Manager, never in state
  master_user_secret_kms_key_id       = aws_kms_key.mlops.arn
  db_subnet_group_name                = aws_db_subnet_group.mlflow.name
  vpc_security_group_ids              = [aws_security_group.mlflow_db.id]
  parameter_group_name                = aws_db_parameter_group.mlflow.name
  multi_az                            = var.db_multi_az
  storage_encrypted                   = true
  kms_key_id                          = aws_kms_key.mlops.arn
  publicly_accessible                 = false
  iam_database_authentication_enabled = true
  backup_retention_period             = 14
  copy_tags_to_snapshot               = true
  deletion_protection                 = true
  auto_minor_version_upgrade          = true
  monitoring_interval                 = 60
  monitoring_role_arn                 = aws_iam_role.rds_monitoring.arn
  performance_insights_enabled        = true
  performance_insights_kms_key_id     = aws_kms_key.mlops.arn
  enabled_cloudwatch_logs_exports     = ["postgresql", "upgrade"]
  skip_final_snapshot                 = false
  final_snapshot_identifier           = "${local.name}-mlflow-final"
}

resource "aws_security_group" "mlflow" {
  name        = "${local.name}-mlflow"
  description = "the MLflow server: port 5000 from the VPC"
  vpc_id      = var.vpc_id

  ingress {
    description = "MLflow from inside the VPC"
    from_port   = 5000
    to_port     = 5000
    protocol    = "tcp"
    cidr_blocks = var.allowed_cidr_blocks
  }

  egress {
    description = "HTTPS: S3, ECR, CloudWatch, Secrets Manager"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }

  egress {
    description = "Postgres inside the VPC"
    from_port   = 5432
    to_port     = 5432
    protocol    = "tcp"
    cidr_blocks = var.allowed_cidr_blocks
  }
}

resource "aws_service_discovery_private_dns_namespace" "mlops" {
  name = "${var.environment}.mlops.internal"
  vpc  = var.vpc_id
}

resource "aws_service_discovery_service" "mlflow" {
  name = "mlflow"
  dns_config {
    namespace_id = aws_service_discovery_private_dns_namespace.mlops.id
    dns_records {
      type = "A"
      ttl  = 10
    }
  }
}

resource "aws_ecs_task_definition" "mlflow" {
  family                   = "${local.name}-mlflow"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 1024
  memory                   = 2048
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  container_definitions = jsonencode([{
    name                   = "mlflow"
    image                  = var.mlflow_image
    essential              = true
    readonlyRootFilesystem = true
    user                   = "10001"
    portMappings           = [{ containerPort = 5000, protocol = "tcp" }]
    command = [
      "mlflow", "server", "--host", "0.0.0.0", "--port", "5000",
      "--artifacts-destination", "s3://${module.bucket["mlflow"].bucket}/artifacts",
      "--serve-artifacts",
    ]
    # mlflow reads MLFLOW_BACKEND_STORE_URI; the entrypoint composes it from these parts
    environment = [
      { name = "DB_HOST", value = aws_db_instance.mlflow.address },
      { name = "DB_NAME", value = "mlflow" },
    ]
    secrets = [{ name = "DB_CREDENTIALS", valueFrom = aws_db_instance.mlflow.master_user_secret[0].secret_arn }]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.this["mlflow"].name
        awslogs-region        = var.region
        awslogs-stream-prefix = "mlflow"
      }
    }
  }])
}

resource "aws_ecs_service" "mlflow" {
  name            = "mlflow"
  cluster         = aws_ecs_cluster.this.id
  task_definition = aws_ecs_task_definition.mlflow.arn
  desired_count   = 1
  launch_type     = "FARGATE"

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.mlflow.id]
    assign_public_ip = false
  }

  service_registries {
    registry_arn = aws_service_discovery_service.mlflow.arn
  }
}
